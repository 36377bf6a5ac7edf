"""Rosenbrock validation of LLQR (the paper's Fig. 2 and Fig. 4; llqr_spec.md §7).

R_{a,b}(x, y) = (a − x)² + b(y − x²)², minimum at (a, a²) [P]. Two formulations, both the authors'
(`models/single_layer_functions.py` [C]):

* two-layer split (`SplitRosenbrock1stBlock/2ndBlock`): input s = (a, b), controls θ_0 = x, θ_1 = y,
  stage 0: z = (a² − 2a·x, x², b); stage 1: z_1 + z_2 + z_3·(y − z_2)²; ℓ(x_2) = x_2 (so a_N = 1, Q_N = 0).
* single layer (`Rosenbrock2DBlock`): one stage with θ = (x, y), f = R_{a,b}(θ).

Methods (Fig. 2 legend [P]; implementation choices marked):
* ``newton_step``: −(H + λI)⁻¹g with the closed-form Hessian.
* ``riccati_step``: the exact LQR on the two-layer split, Newton geometry (llqr.exact.solve_lqr).
* the relaxation (spec §4.1, §4.4): u = U·d, d = −g, U fitted by minimising the LQR objective
  J(U) = gᵀu + ½uᵀ(H + λI)u. By the Theorem of spec §3 this quadratic *is* the LQR cost of the
  controls u on either formulation, so on a 2-parameter problem we evaluate it from the exact g and H
  instead of the matrix-free rollout [E]. Structures: ``scalar`` = one scalar per layer on the
  two-layer split (the block-diagonal U of Fig. 2, green) and ``dense`` = a 2×2 U on the single-layer
  formulation (Fig. 2, blue). Inner loop as the authors' `preconditioner.py` [C]: identity init, warm
  start, per-leaf gradient clip, SGD with momentum 0.9 (buffer re-initialised each refit), NaN→0,
  EMA of U, optional clip U ≥ 1e−8 for scalar structures (`allow_grad_inversion: false` [C]).
* ``diag_newton_step``: −g/|diag H| (the diagonal-Hessian Newton baseline of Fig. 4 [P]; the |·| is ours).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import nn

from llqr.exact import solve_lqr
from llqr.stages import build_stages

A_COEF, B_COEF = 1.0, 100.0  # R_{1,100} [P]


def rosenbrock(theta: torch.Tensor, a: float = A_COEF, b: float = B_COEF) -> torch.Tensor:
    return (a - theta[0]) ** 2 + b * (theta[1] - theta[0] ** 2) ** 2


def grad_and_hessian(theta: torch.Tensor, a: float = A_COEF, b: float = B_COEF):
    """Closed-form g and H of R at θ (tests/llqr/test_exact_rosenbrock.py checks them against autograd)."""
    x, y = float(theta[0]), float(theta[1])
    r = y - x * x
    g = torch.tensor([-2 * (a - x) - 4 * b * x * r, 2 * b * r], dtype=theta.dtype, device=theta.device)
    H = torch.tensor([[2 - 4 * b * r + 8 * b * x * x, -4 * b * x], [-4 * b * x, 2 * b]],
                     dtype=theta.dtype, device=theta.device)
    return g, H


# ------------------------------------------------------------------ formulations as stage models

class SplitFirst(nn.Module):
    """Stage 0 of the two-layer split: (a, b) ↦ (a² − 2a·x, x², b); θ_0 = x [C]."""

    def __init__(self, x: float):
        super().__init__()
        self.x = nn.Parameter(torch.tensor([x], dtype=torch.float64))

    def forward(self, s):
        a, b = s[0:1], s[1:2]
        return torch.cat([a ** 2 - 2 * a * self.x, self.x ** 2, b])


class SplitSecond(nn.Module):
    """Stage 1 of the two-layer split: z ↦ z_1 + z_2 + z_3(y − z_2)²; θ_1 = y [C]."""

    def __init__(self, y: float):
        super().__init__()
        self.y = nn.Parameter(torch.tensor([y], dtype=torch.float64))

    def forward(self, z):
        return z[0:1] + z[1:2] + z[2:3] * (self.y - z[1:2]) ** 2


def split_model(theta: torch.Tensor) -> nn.Sequential:
    return nn.Sequential(SplitFirst(float(theta[0])), SplitSecond(float(theta[1])))


def split_input(a: float = A_COEF, b: float = B_COEF) -> torch.Tensor:
    return torch.tensor([a, b], dtype=torch.float64)


# ------------------------------------------------------------------ exact steps

def newton_step(theta: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    g, H = grad_and_hessian(theta)
    return -torch.linalg.solve(H + damping * torch.eye(2, dtype=H.dtype), g)


def riccati_step(theta: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """The exact LQR step on the two-layer split, Newton geometry (spec §7 ✓[R1], §3)."""
    stages = build_stages(split_model(theta))
    controls = solve_lqr(stages, split_input(), lambda out: out.sum(), "newton", damping)
    return torch.cat(controls)


def diag_newton_step(theta: torch.Tensor) -> torch.Tensor:
    g, H = grad_and_hessian(theta)
    return -g / H.diagonal().abs()


# ------------------------------------------------------------------ the relaxation

@dataclass
class InnerConfig:
    """The inner loop of a refit. Defaults: the paper's Rosenbrock setting (lr 1e−4, 500 steps [P]),
    the code's clip 5.0 and momentum 0.9 [C], warm start [C], EMA 0 (code default [C])."""

    steps: int = 500
    lr: float = 1e-4
    momentum: float = 0.9
    clip: float = 5.0
    ema_decay: float = 0.0
    warm_start: bool = True
    min_scalar: float | None = None  # 1e−8 reproduces the code's diag/scalar clip; off = ours
    damping: float = 0.0


class RelaxedU:
    """U for the 2-D problem: ``scalar`` (one scalar per layer, two-layer split) or ``dense`` (2×2).

    The inner loop runs hundreds of steps on 2–4 numbers per outer step, so it uses plain Python
    floats (torch's per-op overhead would dominate); ``leaves`` are lists of floats, one list per
    clip group (a leaf of the authors' parameter pytree).
    """

    def __init__(self, structure: str):
        if structure not in ("scalar", "dense"):
            raise ValueError(f"Invalid structure: {structure}. Must be 'scalar' or 'dense'.")
        self.structure = structure
        # identity init (`block_structure_init: identity` [C])
        self.leaves = [[1.0], [1.0]] if structure == "scalar" else [[1.0, 0.0, 0.0, 1.0]]

    def apply_floats(self, d, leaves=None):
        leaves = self.leaves if leaves is None else leaves
        if self.structure == "scalar":
            return [leaves[0][0] * d[0], leaves[1][0] * d[1]]
        U = leaves[0]
        return [U[0] * d[0] + U[1] * d[1], U[2] * d[0] + U[3] * d[1]]

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.apply_floats(d.tolist()), dtype=d.dtype, device=d.device)

    def pullback(self, gamma, d):
        """∂J/∂φ from Γ = ∂J/∂u (spec §4.3 [C]): scalar ⟨Γ_i, d_i⟩ per layer, dense Γdᵀ."""
        if self.structure == "scalar":
            return [[gamma[0] * d[0]], [gamma[1] * d[1]]]
        return [[gamma[0] * d[0], gamma[0] * d[1], gamma[1] * d[0], gamma[1] * d[1]]]

    def refit(self, g: torch.Tensor, H: torch.Tensor, cfg: InnerConfig) -> None:
        """One refit: minimise J(U) = gᵀUd + ½(Ud)ᵀ(H+λI)(Ud), d = −g (spec §4.1, §4.4 [C])."""
        gl = g.tolist()
        d = [-gl[0], -gl[1]]  # "Starting update is negative gradient" [C]
        (m00, m01), (m10, m11) = (H + cfg.damping * torch.eye(2, dtype=H.dtype)).tolist()
        old = [list(leaf) for leaf in self.leaves]
        phi = [list(leaf) for leaf in (self.leaves if cfg.warm_start else RelaxedU(self.structure).leaves)]
        buf = [[0.0] * len(leaf) for leaf in phi]  # optimiser state re-initialised per refit [C]
        for _ in range(cfg.steps):
            u = self.apply_floats(d, phi)
            gamma = [gl[0] + m00 * u[0] + m01 * u[1], gl[1] + m10 * u[0] + m11 * u[1]]  # g + (M+λI)u, §4.2
            for p, b, grad in zip(phi, buf, self.pullback(gamma, d)):
                grad = [_sanitize(v) for v in grad]  # nan→0, ±inf→±1 [C]
                norm = math.sqrt(sum(v * v for v in grad))
                scale = cfg.clip / norm if norm > cfg.clip else 1.0  # clip each leaf's L2 norm [C]
                for j, v in enumerate(grad):
                    b[j] = cfg.momentum * b[j] + scale * v  # optax.sgd(momentum=0.9): trace ...
                    p[j] -= cfg.lr * b[j]  # ... then −lr·trace
        beta = cfg.ema_decay
        self.leaves = [[beta * o + (1 - beta) * _sanitize(v, inf=sys.float_info.max) for o, v in zip(lo, lp)]
                       for lo, lp in zip(old, phi)]  # nan_to_num(φ_T), then EMA [C]
        if cfg.min_scalar is not None and self.structure == "scalar":
            self.leaves = [[max(v, cfg.min_scalar) for v in leaf] for leaf in self.leaves]


def _sanitize(v: float, inf: float = 1.0) -> float:
    if math.isnan(v):
        return 0.0
    if math.isinf(v):
        return math.copysign(inf, v)
    return v


def objective(g: torch.Tensor, H: torch.Tensor, u: torch.Tensor, damping: float = 0.0) -> float:
    return float(g @ u + 0.5 * u @ (H + damping * torch.eye(2, dtype=H.dtype)) @ u)


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    denom = float(u.norm() * v.norm())
    return float(u @ v) / denom if denom > 0 else math.nan
