"""The exact layerwise LQR step (Riccati backward recursion + forward rollout) and its dense reference.

Public API (issue 5 §1):

    lqr_step(model, loss, inputs, targets, geometry, damping=0.0, lr=1.0) -> list[Tensor]
    dense_step(model, loss, inputs, targets, geometry, damping=0.0, lr=1.0) -> list[Tensor]

Both return −lr·(M + λI)⁻¹g, one tensor per parameter in ``model.parameters()`` order, where g is the
gradient of the batch-mean loss and M the curvature of that same mean loss: Jᵀ∇²ℓJ (gauss_newton),
the Fisher (natural_gradient), the Hessian (newton), or I (euclidean, so the step is −lr·g/(1+λ)).
``lqr_step`` never forms M: it builds the LQR of llqr_spec.md §1–§2 stage by stage (``llqr.stages``)
and solves it by dynamic programming (§3), the authors' ``exact_methods.make_lqr_step`` [C].
``dense_step`` forms M explicitly (autograd Jacobians and double-backward Hessians) and solves.

Both take an optional ``hidden_metrics={i: W_i}``: intermediate-layer metrics ½δx_iᵀW_iδx_i on the
hidden state x_i = output of stage i (1-based, stages as ``llqr.stages.build_stages(model)`` lists
them; W_i a float c for c·I, or a matrix over the flattened state), adding Σ_i J_iᵀW_iJ_i to M
(spec §2 [R]; no implementation in the authors' code).

Both materialise matrices of size (batch·width)²: they are references for tiny problems (spec §3).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian

from llqr import geometry as geo
from llqr.stages import (Stage, build_stages, flatten_params, flatten_state, log_softmax_stage, rollout,
                         unflatten_params)


def _validate(loss, geometry, damping, lr):
    if loss not in geo.LOSSES:
        raise ValueError(f"Invalid loss: {loss}. Must be one of {geo.LOSSES}.")
    if geometry not in geo.GEOMETRIES:
        raise ValueError(f"Invalid geometry: {geometry}. Must be one of {geo.GEOMETRIES}.")
    if damping < 0.0:
        raise ValueError(f"Invalid damping: {damping}. Must be >= 0.0.")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}. Must be >= 0.0.")


def _validate_metrics(hidden_metrics, n_stages: int):
    for index in hidden_metrics or {}:
        if not isinstance(index, int) or not 1 <= index <= n_stages:
            raise ValueError(f"Invalid hidden metric index: {index}. Must be an int in [1, {n_stages}].")


def _check_no_shared(stages: list[Stage], model: nn.Module):
    seen = set()
    for stage in stages:
        for p in stage.params:
            if id(p) in seen:
                raise ValueError("Parameters shared between stages are not supported by the exact LQR.")
            seen.add(id(p))


def _to_model_order(model: nn.Module, stages: list[Stage], per_stage: list, lr: float) -> list[torch.Tensor]:
    """Scatter the per-stage controls back to ``model.parameters()`` order (zeros for unused ones)."""
    by_id = {}
    for stage, u in zip(stages, per_stage):
        if stage.controlled:
            for p, piece in zip(stage.params, unflatten_params(u, stage.params)):
                by_id[id(p)] = lr * piece
    return [by_id.get(id(p), torch.zeros_like(p)).detach() for p in model.parameters()]


# ------------------------------------------------------------------ the LQR solve

def solve_lqr(stages: list[Stage], inputs, terminal_fn: Callable, geometry: str, damping: float = 0.0,
              hidden_metrics: dict | None = None, loss: str | None = None, targets=None) -> list:
    """Controls u_i (flat, one per stage; None for passive stages) minimising the LQR cost.

    ``terminal_fn(x_N) -> scalar`` is ℓ. This is the generic entry point (used by the Rosenbrock
    splits, whose ℓ(x_2) = x_2 is not one of the named losses).
    """
    with torch.no_grad():
        states = rollout(stages, inputs)
    term = geo.terminal_terms(geometry, terminal_fn, states[-1], targets=targets, loss=loss)
    metrics = hidden_metrics or {}
    n_stages = len(stages)
    K = term.Q + _hidden_W(metrics, n_stages, states[-1], term.Q)  # K_N = Q_N (+ W_N)
    v = term.a  # v_N = a_N
    mu = term.mu
    gains, jacobians = [None] * n_stages, [None] * n_stages
    for i in reversed(range(n_stages)):  # backward Riccati pass, spec §3 [C] retrieve_k_lambda_etc
        stage, x, first = stages[i], states[i], i == 0
        A, B = jacobians[i] = geo.stage_jacobians(stage, x, first)
        Q, S, R = _stage_costs(stage, x, mu, first, term, damping)
        if not first and mu is not None:
            mu = A.T @ mu  # costate μ_i = A_iᵀμ_{i+1} (spec §2)
        if not stage.controlled:  # passive: K_i = Q_i + AᵀKA, v_i = Aᵀv
            if not first:
                K, v = Q + A.T @ K @ A, A.T @ v
        else:
            K, v, gains[i] = _controlled_backup(A, B, Q, S, R, K, v, first)
        if not first:
            K = K + _hidden_W(metrics, i, x, K)
    return _forward_rollout(stages, jacobians, gains)


def _hidden_W(metrics: dict, index: int, state, like: torch.Tensor) -> torch.Tensor | float:
    if index not in metrics:
        return 0.0
    n = flatten_state(state).numel()
    return geo.hidden_metric_matrix(metrics[index], n, like)


def _stage_costs(stage, x, mu, first, term, damping):
    """(Q_i, S_i, R_i) for the geometry: Hamiltonian Hessians if a costate is carried, else zeros."""
    n = None if first else flatten_state(x).numel()
    P = sum(p.numel() for p in stage.params)
    ref = term.a
    if mu is not None:
        Q, S, R = geo.stage_hamiltonian_hessian(stage, x, mu, first)
    else:
        Q = None if first else ref.new_zeros(n, n)
        S = None if (first or not stage.controlled) else ref.new_zeros(P, n)
        R = ref.new_zeros(P, P) if stage.controlled else None
    if R is not None:  # damping / trust term R_i ← R_i + λI [C]; euclidean R = I [P] App. A
        R = R + (term.control_cost + damping) * torch.eye(P, dtype=ref.dtype, device=ref.device)
    return Q, S, R


def _controlled_backup(A, B, Q, S, R, K, v, first):
    """One controlled Riccati step (spec §3): G = R + BᵀKB, P = S + BᵀKA, h = Bᵀv, k = −G⁻¹h, F = −G⁻¹P."""
    BK = B.T @ K
    G = R + BK @ B
    h = B.T @ v
    k = -torch.linalg.solve(G, h)
    if first:  # δx_0 = 0: only G_0 and h_0 are needed
        return K, v, (k, None)
    P = S + BK @ A
    F = -torch.linalg.solve(G, P)
    K_new = Q + A.T @ K @ A + P.T @ F  # Q + AᵀKA − PᵀG⁻¹P
    v_new = A.T @ v + P.T @ k  # Aᵀv − PᵀG⁻¹h
    return K_new, v_new, (k, F)


def _forward_rollout(stages, jacobians, gains) -> list:
    """δx_0 = 0; u_i = k_i + F_iδx_i; δx_{i+1} = A_iδx_i + B_iu_i (spec §3 [C] get_update)."""
    dx = None  # None stands for δx = 0
    controls = []
    for i, stage in enumerate(stages):
        A, B = jacobians[i]
        u = None
        if stage.controlled:
            k, F = gains[i]
            u = k if dx is None else k + F @ dx
        nxt = None if dx is None else A @ dx
        if u is not None:
            nxt = B @ u if nxt is None else nxt + B @ u
        dx = nxt
        controls.append(u)
    return controls


def lqr_step(model: nn.Module, loss: str, inputs, targets, geometry: str, damping: float = 0.0,
             lr: float = 1.0, hidden_metrics: dict | None = None) -> list[torch.Tensor]:
    """−lr·(M + λI)⁻¹g by the layerwise LQR (Riccati recursion + rollout); see the module docstring."""
    _validate(loss, geometry, damping, lr)
    stages = build_stages(model)
    _check_no_shared(stages, model)
    _validate_metrics(hidden_metrics, len(stages))
    if geometry == "natural_gradient" and loss == "cross_entropy":
        # The authors' networks end in a passive log-softmax stage and ℓ is NLL on log-probs (§2 [C]).
        full = stages + [log_softmax_stage()]
        controls = solve_lqr(full, inputs, lambda lp: geo.nll_on_log_probs(lp, targets), geometry,
                             damping, hidden_metrics, loss=loss, targets=targets)[:-1]
    else:
        controls = solve_lqr(stages, inputs, lambda out: geo.mean_loss(loss, out, targets), geometry,
                             damping, hidden_metrics, loss=loss, targets=targets)
    return _to_model_order(model, stages, controls, lr)


# ------------------------------------------------------------------ the dense reference

def dense_curvature(model: nn.Module, loss: str, inputs, targets, geometry: str,
                    hidden_metrics: dict | None = None):
    """(g, M) over the flat parameter vector of the stages, M formed explicitly (tiny problems only)."""
    stages = build_stages(model)
    params = [p for s in stages for p in s.params]
    theta = flatten_params([p.detach() for p in params])

    def hidden(th, index):  # x_index as a function of all parameters
        pieces, offset, per_stage = unflatten_params(th, params), 0, []
        for s in stages:
            per_stage.append(pieces[offset:offset + len(s.params)])
            offset += len(s.params)
        return rollout(stages[:index], inputs, per_stage[:index])[-1]

    def output(th):
        return flatten_state(hidden(th, len(stages)))

    def lossf(th):
        return geo.mean_loss(loss, hidden(th, len(stages)), targets)

    g = jacobian(lossf, theta)
    with torch.no_grad():
        shape = hidden(theta, len(stages)).shape
    M = _dense_metric(geometry, loss, output, lossf, theta, targets, lambda th: shape)
    for index, weight in (hidden_metrics or {}).items():
        J = jacobian(lambda th: flatten_state(hidden(th, index)), theta)
        M = M + J.T @ geo.hidden_metric_matrix(weight, J.shape[0], J) @ J
    return stages, g, M


def _dense_metric(geometry, loss, output, lossf, theta, targets, output_shape):
    P = theta.numel()
    if geometry == "euclidean":
        return torch.eye(P, dtype=theta.dtype, device=theta.device)
    if geometry == "newton":
        return hessian(lossf, theta)  # double backward (issue 5 §4: not forward-over-reverse)
    out = output(theta).detach()
    shape = output_shape(theta)
    J = jacobian(output, theta)
    if geometry == "gauss_newton":  # Jᵀ ∇²ℓ(output) J, ∇²ℓ by double backward
        H_out = hessian(lambda o: geo.mean_loss(loss, o.reshape(shape), targets), out)
        return J.T @ H_out @ J
    return _dense_fisher(loss, J, out, shape, targets)


def _dense_fisher(loss, J, out, shape, targets):
    """The Fisher of the mean loss, written independently of the LQR route (spec §2 [R])."""
    if loss == "mse":  # unit-variance Gaussian: F = JᵀJ/B
        return J.T @ J / shape[0]
    # Softmax: F = (1/B) Σ_n Σ_c p_nc s_nc s_ncᵀ with scores s_nc = ∇_θ log p_nc = J_nᵀ(e_c − p_n).
    C = shape[-1]
    p = torch.softmax(out.reshape(-1, C), dim=-1)
    Jn = J.reshape(-1, C, J.shape[-1])
    eye = torch.eye(C, dtype=J.dtype, device=J.device)
    scores = torch.einsum("ncP,nkc->nkP", Jn, eye.unsqueeze(0) - p.unsqueeze(1))  # (B, C, P)
    return torch.einsum("nk,nkP,nkQ->PQ", p, scores, scores) / p.shape[0]


def dense_step(model: nn.Module, loss: str, inputs, targets, geometry: str, damping: float = 0.0,
               lr: float = 1.0, hidden_metrics: dict | None = None) -> list[torch.Tensor]:
    """−lr·(M + λI)⁻¹g with M formed explicitly and solved (the reference ``lqr_step`` is tested against)."""
    _validate(loss, geometry, damping, lr)
    _validate_metrics(hidden_metrics, len(build_stages(model)))
    stages, g, M = dense_curvature(model, loss, inputs, targets, geometry, hidden_metrics)
    _check_no_shared(stages, model)
    eye = torch.eye(g.numel(), dtype=g.dtype, device=g.device)
    u = -torch.linalg.solve(M + damping * eye, g)
    controls, offset = [], 0
    for s in stages:
        n = sum(p.numel() for p in s.params)
        controls.append(u[offset:offset + n] if s.controlled else None)
        offset += n
    return _to_model_order(model, stages, controls, lr)
