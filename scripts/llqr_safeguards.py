"""LLQR's engineering safeguards measured, not assumed (issue 5 §2; llqr_spec.md §4.6).

LLQR (diagonal U, SGD base) is trained under these settings, for several seeds:

  base           U = I (precond_steps = 0): the base optimizer itself
  paper          the authors' algorithm (mode="paper"): inner SGD-momentum 0.9, clip 5, fixed inner lr [C]
  +scale_free    paper + the scale-free inner step: ∂J/∂φ / (λ_max(M+λI)·‖d‖²), inner lr 1 [E]
  +acceptance    paper + refit acceptance: keep a refit only if it lowers J on its batch [E]
  engineered     mode="engineered": both, plus the reuse diagnostic e(U_stale)/e(I) (a log only) [E], inner lr 1

for the "ngd" / "gauss_newton" and "newton" geometries (damping 0, so for Newton J is unbounded below where the
Hessian is indefinite, the case the spec's safeguards are meant for), on two problems:

  digits       MLP 64-64-10 (tanh) on scikit-learn's digits (offline; 1,437 train / 360 test), SGD-momentum 0.9,
               lr 0.1, batch 64, 300 steps, refit every 25 steps on its own batch, 50 inner steps, inner lr 1e-3
               (code default [C]), EMA 0.95 (paper [P]); seed = initialisation and batch order.
  rosenbrock   ½R(x, y) as least squares through the two-layer residual split of llqr_spec.md §7 [R2]:
               (a − x, x²) → (z_1, √b (y − z_2)), MSE loss against 0; plain SGD lr 2e-3, 200 steps, refit every
               10 steps, 50 inner steps, inner lr 1e-4 (the paper's Rosenbrock value [P]), EMA 0;
               seed = the start point, uniform in [-2, 2] × [-1, 3]. One-parameter layers: diagonal = scalar U.

A run *diverges* when its training loss turns non-finite or exceeds 10× its initial loss; it is then stopped and
counted. The table gives the divergences and accepted refits of every run and, as mean ± std over the runs that
did not diverge: the final loss (full training set), test accuracy (digits) or ‖θ − (1, 1)‖ (rosenbrock), the
mean reuse ratio over refits 1.. (> 1: the stale U beats U = I on the fresh batch) and how far U moved from the
identity (mean abs(U − 1) over the entries of the diagonal U).

    OMP_NUM_THREADS=1 python -m scripts.llqr_safeguards [--seeds 0 1 2] [--problems digits rosenbrock]
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llqr import LLQR

SAFEGUARDS = {  # setting -> LLQR keywords; "lr" stands for the problem's paper inner lr
    "paper": dict(mode="paper", precond_lr="paper"),
    "+scale_free": dict(mode="paper", scale_free=True, precond_lr=1.0),
    "+acceptance": dict(mode="paper", refit_acceptance=True, precond_lr="paper"),
    "engineered": dict(mode="engineered", precond_lr=1.0),
}
DIVERGED = 10.0  # × the initial loss


class Digits:
    """MLP on scikit-learn's digits; the split is fixed, the seed sets the initialisation and the batches."""

    name, loss, geometries = "digits", "cross_entropy", ("ngd", "newton")
    settings = dict(lr=0.1, momentum=0.9, steps=300, batch=64, refit_every=25, precond_lr=1e-3, ema_decay=0.95)

    def __init__(self):
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.int64)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
        x, y = x[perm], y[perm]
        n = int(0.8 * len(y))
        x = (x - x[:n].mean(0)) / x[:n].std(0).clamp(min=1e-3)
        self.train, self.test = (x[:n], y[:n]), (x[n:], y[n:])

    def setup(self, seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
        gen = torch.Generator().manual_seed(10_000 + seed)
        x, y = self.train

        def sample_batch(n):
            idx = torch.randint(0, len(y), (n,), generator=gen)
            return x[idx], y[idx]

        return model, sample_batch

    def full_loss(self, model):
        return float(nn.functional.cross_entropy(model(self.train[0]), self.train[1]))

    def metric(self, model):  # test accuracy
        return float((model(self.test[0]).argmax(1) == self.test[1]).float().mean())


class _Residual0(nn.Module):
    """(a, b) ↦ (a − x, x²); θ_0 = x (llqr_spec.md §7, Gauss–Newton split [R2])."""

    def __init__(self, x):
        super().__init__()
        self.x = nn.Parameter(torch.tensor([x], dtype=torch.float64))

    def forward(self, s):
        return torch.stack([s[:, 0] - self.x, (self.x ** 2).expand(s.shape[0])], 1)


class _Residual1(nn.Module):
    """z ↦ (z_1, √b (y − z_2)); θ_1 = y, so ½‖output‖² = ½R(x, y)."""

    def __init__(self, y, b):
        super().__init__()
        self.y, self.sqrt_b = nn.Parameter(torch.tensor([y], dtype=torch.float64)), math.sqrt(b)

    def forward(self, z):
        return torch.stack([z[:, 0], self.sqrt_b * (self.y - z[:, 1])], 1)


class Rosenbrock:
    """½R_{1,100} as least squares; the seed draws the start point."""

    name, loss, geometries = "rosenbrock", "mse", ("gauss_newton", "newton")
    settings = dict(lr=2e-3, momentum=0.0, steps=200, batch=1, refit_every=10, precond_lr=1e-4, ema_decay=0.0)
    a, b = 1.0, 100.0

    def setup(self, seed):
        gen = torch.Generator().manual_seed(seed)
        x0, y0 = float(torch.rand(1, generator=gen) * 4 - 2), float(torch.rand(1, generator=gen) * 4 - 1)
        model = nn.Sequential(_Residual0(x0), _Residual1(y0, self.b))
        batch = (torch.tensor([[self.a, self.b]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
        return model, lambda n: batch

    def full_loss(self, model):
        return float(0.5 * model(torch.tensor([[self.a, self.b]], dtype=torch.float64)).pow(2).sum())

    def metric(self, model):  # distance to the minimum (1, 1)
        return math.hypot(float(model[0].x) - 1.0, float(model[1].y) - 1.0)


def train(problem, setting, geometry, seed, inner_steps):
    """One run; returns a dict of its final figures."""
    cfg = problem.settings
    model, sample_batch = problem.setup(seed)
    extra = dict(precond_steps=0) if setting == "base" else dict(SAFEGUARDS[setting], precond_steps=inner_steps)
    if extra.get("precond_lr") == "paper":
        extra["precond_lr"] = cfg["precond_lr"]
    opt = LLQR(model.parameters(), model=model, loss=problem.loss, sample_batch=sample_batch, lr=cfg["lr"],
               momentum=cfg["momentum"], divergence=geometry, update_preconditioner_every=cfg["refit_every"],
               precond_batch_size=cfg["batch"], ema_decay=cfg["ema_decay"], verbose=False, **extra)
    with torch.no_grad():
        initial = problem.full_loss(model)
    diverged_at = None
    for step in range(cfg["steps"]):
        xb, yb = sample_batch(cfg["batch"])

        def closure():
            opt.zero_grad()
            out = model(xb)
            loss = (nn.functional.cross_entropy(out, yb) if problem.loss == "cross_entropy"
                    else 0.5 * (out - yb).pow(2).sum(1).mean())
            loss.backward()
            return loss.detach()

        loss = float(opt.step(closure))
        if not math.isfinite(loss) or loss > DIVERGED * initial:
            diverged_at = step
            break
    with torch.no_grad():
        final, metric = problem.full_loss(model), problem.metric(model)
    history = opt.llqr_state["history"]
    accepted = [h["accepted"] for h in history if "accepted" in h]
    reuse = [h["reuse_ratio"] for h in history[1:] if math.isfinite(h.get("reuse_ratio", math.nan))]
    diag = torch.cat([f["diag"] for f in opt.preconditioner_factors()])
    return dict(final_loss=final if diverged_at is None else math.nan, metric=metric, diverged_at=diverged_at,
                refits=len(history), accepted=sum(accepted) if accepted else None,
                reuse=float(np.mean(reuse)) if reuse else None,  # refit 0 starts from U = I: ratio 1, left out
                u_dev=float((diag - 1).abs().mean()))


def _mean_std(values, fmt="{:.4g}"):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    return (fmt + " ± " + fmt).format(np.mean(values), np.std(values)) if len(values) > 1 else fmt.format(values[0])


def table(rows):
    head = ("problem", "geometry", "setting", "final loss", "test acc / ‖θ−θ*‖", "diverged", "accepted refits",
            "reuse e(U)/e(I)", "mean abs(U − 1)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, geometry, setting), runs in rows.items():
        steps = [str(r["diverged_at"]) for r in runs if r["diverged_at"] is not None]
        accepted = [f"{r['accepted']}/{r['refits']}" for r in runs if r["accepted"] is not None]
        kept = [r for r in runs if r["diverged_at"] is None]  # averages over the runs that did not diverge
        lines.append("| " + " | ".join([
            name, geometry, setting, _mean_std([r["final_loss"] for r in kept]),
            _mean_std([r["metric"] for r in kept]),
            f"{len(steps)}/{len(runs)}" + (f" (at step {', '.join(steps)})" if steps else ""),
            ", ".join(accepted) if accepted else "—", _mean_std([r["reuse"] for r in kept]),
            _mean_std([r["u_dev"] for r in kept], "{:.2g}")]) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--problems", nargs="+", choices=["digits", "rosenbrock"], default=["digits", "rosenbrock"])
    p.add_argument("--precond-steps", type=int, default=50)
    p.add_argument("--out-dir", default="results/runs/llqr_safeguards")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows, start = {}, time.perf_counter()
    for problem in [Digits() if name == "digits" else Rosenbrock() for name in args.problems]:
        rows[(problem.name, "—", "base")] = [train(problem, "base", "ngd", s, 0) for s in args.seeds]
        for geometry in problem.geometries:
            for setting in SAFEGUARDS:
                rows[(problem.name, geometry, setting)] = [train(problem, setting, geometry, s, args.precond_steps)
                                                           for s in args.seeds]
                print(f"{problem.name} {geometry} {setting}: {time.perf_counter() - start:.0f} s", flush=True)
    text, elapsed = table(rows), time.perf_counter() - start
    print(text)
    command = " ".join(["OMP_NUM_THREADS=1 python -m scripts.llqr_safeguards"] + [shlex.quote(a) for a in sys.argv[1:]])
    doc = __doc__.split("\n\n    OMP_NUM_THREADS")[0]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(
        f"# LLQR safeguards: paper vs engineered mode\n\nCommand: `{command}`  \n"
        f"Seeds {args.seeds}, {args.precond_steps} inner steps per refit, torch {torch.__version__}, one thread, "
        f"{elapsed:.0f} s wall.\n\n```\n{doc}\n```\n\n{text}\n")
    print(f"wrote {out / 'summary.md'} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
