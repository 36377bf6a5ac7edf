"""One refit of the structured preconditioner: the inner loop of llqr_spec.md §4.4 [C] (`preconditioner.py`).

    d ← −g                                                  [C] "Starting update is negative gradient"
    φ0 ← φ_current (warm start)                              [C] `warm_start_precond: true`
    repeat precond_steps times:                               [C] `jax.lax.scan`
        Γ = ∂J/∂u at u = U(φ)d;  ∂J/∂φ = (∂u/∂φ)ᵀΓ            [C] adjoint gradient + structure pull-back
        sanitise: NaN→0, +inf→+1, −inf→−1                     [C] `_sanitize_preconditioner_grads`
        clip each leaf to L2 norm ≤ clip                       [C] `clip_by_group_norm` (before momentum)
        m ← grad + 0.9 m;  φ ← φ − lr·m                        [C] optax.sgd(momentum=0.9), state fresh per refit
    φ_T ← nan_to_num(φ)                                       [C]

EMA and the positivity clip are applied by the optimizer afterwards. The optional scale-free step [E]
(spec §4.6) divides ∂J/∂φ by λ_max(M + λI)·‖d‖² before the clip, so that lr ≈ 1 works at any scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Block:
    """One controlled stage: its name, module type, positions in the optimizer's parameter list, structure."""

    name: str
    module_type: str
    index: list
    structure: object


@dataclass
class RefitResult:
    factors: list  # one dict of factor tensors per block (φ_T, after nan_to_num)
    J: list = field(default_factory=list)  # J(φ_k), k = 0..steps-1 (and J(φ_T) last when asked)
    efficiency: float | None = None  # (gᵀu)²/(uᵀ(M+λI)u) of the starting (stale) U, for the reuse diagnostic


def controls(blocks, factors, d):
    """u = U(φ)·d in the optimizer's parameter order."""
    u = [None] * len(d)
    for block, phi in zip(blocks, factors):
        for i, ui in zip(block.index, block.structure.apply(phi, [d[i] for i in block.index])):
            u[i] = ui
    return u


def _clip_leaves(grads, clip):
    """optax-style per-leaf clip: g · clip / max(clip, ‖g‖)  [C] `clip_by_group_norm` (one foreach product)."""
    if clip is None or clip <= 0 or not grads:
        return grads
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    return torch._foreach_mul(grads, list((clip / torch.clamp(norms, min=clip)).unbind()))


def largest_eigenvalue(objective, like, iters=20, seed=0):
    """λ_max(M + λI) by power iteration on matrix-free products (for the scale-free step [E] §4.6)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in like]
    lam = torch.zeros((), dtype=like[0].dtype, device=like[0].device)
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        mv = [m + objective.damping * x for m, x in zip(objective.metric_product(v), v)]
        lam = sum((a * b).sum() for a, b in zip(v, mv))
        v = mv
    return lam.abs()


def fit_preconditioner(blocks, factors, objective, steps, lr, clip, momentum=0.9, scale_free=False,
                       record=False, final_value=False):
    """Run the inner loop from ``factors`` (warm start) and return φ_T (the inputs are not modified)."""
    d = [-g for g in objective.g]  # d = −g [C]
    phi = [{k: t.clone() for k, t in f.items()} for f in factors]
    leaves = [(b, key) for b, f in enumerate(phi) for key in f]  # every factor array, in a fixed order
    bufs = None  # momentum state re-initialised at every refit [C]
    scale = None
    if scale_free:  # [E] spec §4.6: gradient / (λ_max(M+λI)·‖d‖²)
        d_sq = sum((x * x).sum() for x in d)
        scale = 1.0 / torch.clamp(largest_eigenvalue(objective, d) * d_sq, min=torch.finfo(d[0].dtype).tiny)
    result = RefitResult(factors=phi)
    for step in range(steps):
        u = controls(blocks, phi, d)
        gamma = objective.grad_u(u)
        if record:
            result.J.append(float(objective.value(u, gamma)))
        if step == 0:
            result.efficiency = _efficiency(objective, u, gamma)
        pulled = [block.structure.pullback(f, [d[i] for i in block.index], [gamma[i] for i in block.index])
                  for block, f in zip(blocks, phi)]
        grads = [pulled[b][key] if scale is None else pulled[b][key] * scale for b, key in leaves]
        grads = [torch.nan_to_num(g, nan=0.0, posinf=1.0, neginf=-1.0) for g in grads]  # [C]
        grads = _clip_leaves(grads, clip)  # per-leaf clip, before momentum [C]
        if bufs is None:
            bufs = grads
        else:  # optax trace: m ← g + momentum·m [C]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
        new = torch._foreach_sub([phi[b][key] for b, key in leaves], torch._foreach_mul(bufs, lr))
        for (b, key), value in zip(leaves, new):
            phi[b][key] = value
    result.factors = [{k: torch.nan_to_num(t) for k, t in f.items()} for f in phi]  # [C]
    if record or final_value:
        result.J.append(float(objective.value(controls(blocks, result.factors, d))))
    return result


def _efficiency(objective, u, gamma):
    """(gᵀu)² / (uᵀ(M+λI)u), from the products of inner step 0 ((M+λI)u = Γ − g) [E] §4.6."""
    gu = sum((g * x).sum() for g, x in zip(objective.g, u))
    quad = sum((x * (c - g)).sum() for x, c, g in zip(u, gamma, objective.g))
    return float(gu * gu / quad) if float(quad) > 0 else float("nan")


def identity_efficiency(objective):
    """(gᵀg)² / (gᵀ(M+λI)g): the same quantity for U = I (one extra product) [E]."""
    g = objective.g
    mg = objective.metric_product(g)
    gg = sum((x * x).sum() for x in g)
    quad = sum((x * m).sum() for x, m in zip(g, mg)) + objective.damping * gg
    return float(gg * gg / quad) if float(quad) > 0 else float("nan")
