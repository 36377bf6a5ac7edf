"""LQR cost matrices for each geometry (llqr_spec.md §2, table "Cost matrices for each geometry").

The LQR cost is  J(u) = a_Nᵀδx_N + ½δx_Nᵀ Q_N δx_N + Σ_i [½δx_iᵀQ_iδx_i + u_iᵀS_iδx_i + ½u_iᵀR_iu_i].

| geometry          | a_N  | Q_N                          | Q_i, S_i, R_i                          | tag     |
|-------------------|------|------------------------------|----------------------------------------|---------|
| euclidean         | ∇ℓ   | 0                            | 0, 0, (1+λ)I  (M = I)                  | [P] App. A |
| gauss_newton      | ∇ℓ   | ∇²ℓ(x_N)                     | 0, 0, λI                               | [R]     |
| natural_gradient  | ∇ℓ   | ∇²_{x'}D(x_N, x')            | Hessians of μᵀf_i, μ = divergence costate, + λI | [C] `divergence=ngd` |
| newton            | ∇ℓ   | ∇²ℓ(x_N)                     | Hessians of λᵀf_i, λ = loss costate, + λI | [C] `divergence=newton` |

Conventions pinned by issue 5 §1: ℓ is the batch *mean* loss and M the curvature of that same mean loss,
so the natural-gradient divergence is mean-scaled here (D = −(1/B)Σ p_ref·log p), unlike the
authors' batch-sum costate −p (spec §2 "Scale caveat" [C]); this only rescales M by B.

Every second derivative here is taken by double backward (``torch.autograd.functional.hessian``,
reverse-over-reverse): with torch 2.14.1 forward-over-reverse through training-mode BatchNorm with
affine parameters returns a wrong Hessian (issue 5 §4); tests/llqr/test_exact_batchnorm.py checks
these paths against finite differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian

from llqr.stages import Stage, flatten_params, flatten_state, unflatten_params, unflatten_state

GEOMETRIES = ("euclidean", "gauss_newton", "natural_gradient", "newton")
LOSSES = ("cross_entropy", "mse")


def mean_loss(loss: str, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch-mean loss of issue 5 §1 (and CONVENTIONS: the training loop's losses)."""
    if loss == "cross_entropy":  # logits (..., C), integer targets (...), mean over all positions
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
    if loss == "mse":  # ½‖output − target‖² summed over outputs, mean over the batch
        return 0.5 * (output - targets).pow(2).sum() / output.shape[0]
    raise ValueError(f"Invalid loss: {loss}. Must be one of {LOSSES}.")


def nll_on_log_probs(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy written on a log-softmax state: linear in the state, so ∇²ℓ = 0 (spec §2 [C])."""
    lp = log_probs.reshape(-1, log_probs.shape[-1])
    return -lp.gather(1, targets.reshape(-1, 1)).mean()


@dataclass
class Terminal:
    """Terminal LQR terms: a_N = ∇ℓ(x_N), Q_N, and the costate seed μ_N of the stage Hamiltonians.

    ``mu is None`` means the geometry has no stage curvature (Q_i = S_i = 0). ``control_cost`` is the
    undamped R_i: 1 for euclidean (M = I), 0 otherwise.
    """

    a: torch.Tensor
    Q: torch.Tensor
    mu: torch.Tensor | None
    control_cost: float = 0.0


def _flat_fn(fn: Callable, like):
    return lambda v: fn(unflatten_state(v, like))


def terminal_terms(geometry: str, loss_fn: Callable, x_N, targets=None, loss: str | None = None) -> Terminal:
    """Terminal terms for ``loss_fn(x_N) -> scalar``; ``loss`` names the loss for natural_gradient.

    For natural_gradient + cross_entropy, x_N must be the log-softmax state (the caller appends
    :func:`llqr.stages.log_softmax_stage`), as in the authors' networks (spec §2 "NGD as the
    authors implement it" [C]).
    """
    v = flatten_state(x_N).detach()
    f = _flat_fn(loss_fn, x_N)
    a = jacobian(f, v)  # ∇ℓ(x_N)
    n = v.numel()
    if geometry == "euclidean":  # App. A [P]: Q_N = 0, R = I (lr applied outside)
        return Terminal(a, v.new_zeros(n, n), None, control_cost=1.0)
    if geometry == "gauss_newton":  # Q_N = ∇²ℓ, no stage curvature [R]
        return Terminal(a, hessian(f, v), None)
    if geometry == "newton":  # Q_N = ∇²ℓ, loss costate λ_N = ∇ℓ [C] divergence=newton
        return Terminal(a, hessian(f, v), a.clone())
    if geometry == "natural_gradient":
        return _natural_gradient_terminal(loss, x_N, targets, a)
    raise ValueError(f"Invalid geometry: {geometry}. Must be one of {GEOMETRIES}.")


def _natural_gradient_terminal(loss, x_N, targets, a) -> Terminal:
    n = a.numel()
    if loss == "cross_entropy":
        # D(lp_ref, lp) = −(1/B)Σ exp(lp_ref)·lp (authors' ngd_divergence_f, mean-scaled): ∇²_{lp}D = 0,
        # μ_N = ∇_{lp}D = −p/B. Its pull-back through log-softmax is 0, so the only curvature is
        # the log-softmax stage's Q = (diag p − ppᵀ)/B: the Fisher (spec §2 [C] ✓[M6]).
        batch = targets.numel()
        mu = -flatten_state(x_N).detach().exp() / batch
        return Terminal(a, a.new_zeros(n, n), mu)
    if loss == "mse":
        # Unit-variance Gaussian: D(y_ref, y) = ‖y − y_ref‖²/(2B): Q_N = I/B and μ_N = 0 (no stage
        # curvature), so M = JᵀJ/B, the Fisher of the Gaussian likelihood [R].
        batch = x_N.shape[0]
        return Terminal(a, torch.eye(n, dtype=a.dtype, device=a.device) / batch, None)
    raise ValueError(f"Invalid loss: {loss}. Must be one of {LOSSES}.")


# ------------------------------------------------------------------ stage terms

def stage_jacobians(stage: Stage, x, first: bool):
    """A_i = ∂f_i/∂x_i (None for stage 0: δx_0 = 0, spec §1 [C]) and B_i = ∂f_i/∂θ_i (None if passive)."""
    xv = flatten_state(x).detach()
    ps = [p.detach() for p in stage.params]

    def f(xvec, *pvec):
        theta = unflatten_params(pvec[0], ps) if pvec else ()
        return flatten_state(stage.fn(unflatten_state(xvec, x), theta))

    if not stage.controlled:
        return (None if first else jacobian(f, xv)), None
    tv = flatten_params(ps)
    if first:
        return None, jacobian(lambda t: f(xv, t), tv)
    A, B = jacobian(f, (xv, tv))
    return A, B


def stage_hamiltonian_hessian(stage: Stage, x, mu_next: torch.Tensor, first: bool):
    """(Q_i, S_i, R_i) = blocks of ∇²_{(x,θ)} μ_{i+1}ᵀ f_i(x_i, θ_i), by double backward (spec §2 [C]).

    Q_i is None for stage 0, S_i and R_i are None for a passive stage.
    """
    xv = flatten_state(x).detach()
    ps = [p.detach() for p in stage.params]
    mu = mu_next.detach()

    def ham(xvec, *pvec):
        theta = unflatten_params(pvec[0], ps) if pvec else ()
        return torch.dot(mu, flatten_state(stage.fn(unflatten_state(xvec, x), theta)))

    if not stage.controlled:
        return (None if first else hessian(ham, xv)), None, None
    tv = flatten_params(ps)
    if first:
        return None, None, hessian(lambda t: ham(xv, t), tv)
    (hxx, _), (hux, huu) = hessian(ham, (xv, tv))
    return hxx, hux, huu


def hidden_metric_matrix(weight, size: int, like: torch.Tensor) -> torch.Tensor:
    """W_i for an intermediate-layer metric ½δx_iᵀW_iδx_i (spec §2 [R] ✓[M4]): c → c·I, or a matrix."""
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        if weight.shape != (size, size):
            raise ValueError(f"Invalid hidden metric shape: {tuple(weight.shape)}. Must be ({size}, {size}).")
        return weight.to(like)
    return float(weight) * torch.eye(size, dtype=like.dtype, device=like.device)
