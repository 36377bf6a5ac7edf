"""Rosenbrock validation of LLQR: the paper's Fig. 2 (loss per step) and Fig. 4 (trajectories, cosine).

Runs, from one start point with one outer step size (θ ← θ + lr_out·u, plain SGD as the authors'
`run_single_layer_test.py` [C]):
  newton              −H⁻¹g                                        (Fig. 2 red)
  riccati             exact LQR on the two-layer split              (Fig. 2 orange)
  llqr_scalar_T{T}    relaxation, per-layer scalar U, two-layer split, refit every T steps (Fig. 2 green)
  llqr_dense_T1       relaxation, dense 2×2 U, single-layer formulation, refit every step (Fig. 2 blue)
  diag_newton         −g/|diag H|                                   (Fig. 4; probably Fig. 2 violet)
and writes <run-dir>/trajectories.csv (one row per method and step), <run-dir>/summary.csv,
<run-dir>/settings.json and three PNGs in <fig-dir>.
Settings are tagged paper / code / ours in settings.json (llqr_spec.md §7: the start point and the
outer step size behind the paper's figures are unknown).

    OMP_NUM_THREADS=1 python -m scripts.rosenbrock_llqr
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
import torch
import yaml

from llqr import rosenbrock as R

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DIVERGED = 1e12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--start", type=float, nargs=2, default=[-1.2, 1.0])
    p.add_argument("--lr-out", type=float, default=5e-3)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--refit-every", type=int, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--inner-steps", type=int, default=500)
    p.add_argument("--inner-lr", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--min-scalar", type=float, default=None)
    p.add_argument("--sweep-starts", type=int, default=0,
                   help="instead of the figures, run every method except riccati (≡ newton) from this many "
                        "start points (fixed seed, uniform in [-2,2]x[-1,3]) and write sweep.csv")
    p.add_argument("--run-dir", default="results/runs/rosenbrock")
    p.add_argument("--fig-dir", default="results/figures/rosenbrock")
    p.add_argument("--table-dir", default="",
                   help="also write one summary.json per method here for `make tables` (the main run uses "
                        "results/runs/llqr_rosenbrock)")
    return p.parse_args(argv)


def run_exact(name, step_fn, theta0, args):
    """Trajectory of θ ← θ + lr_out·step_fn(θ)."""
    return _trajectory(name, theta0, args, lambda th, k: step_fn(th))


def run_relaxed(name, structure, refit_every, theta0, args, cfg):
    U = R.RelaxedU(structure)

    def direction(th, k):
        g, H = R.grad_and_hessian(th)
        if k % refit_every == 0:  # refit at step % T == 0, before that step's update [C] run.py
            U.refit(g, H, cfg)
        return U.apply(-g)

    return _trajectory(name, theta0, args, direction)


def _trajectory(name, theta0, args, direction):
    theta, rows, t0 = theta0.clone(), [], time.time()
    for k in range(args.steps + 1):
        f = float(R.rosenbrock(theta))
        row = {"method": name, "step": k, "x": float(theta[0]), "y": float(theta[1]), "loss": f,
               "cos_newton": math.nan, "step_norm": math.nan}
        rows.append(row)
        if not math.isfinite(f) or f > DIVERGED or k == args.steps:
            break
        u = direction(theta, k)
        row["cos_newton"] = R.cosine(u, R.newton_step(theta))
        row["step_norm"] = float(args.lr_out * u.norm())
        theta = theta + args.lr_out * u
    print(f"{name:18s} final f = {rows[-1]['loss']:.3e} after {rows[-1]['step']} steps "
          f"({time.time() - t0:.1f} s)", flush=True)
    return rows


def write_summary(rows, path):
    """One line per method: final loss, first step with f < 1e-6 / 1e-10, median cosine, divergence."""
    out = []
    for method, rs in _by_method(rows).items():
        cos = sorted(r["cos_newton"] for r in rs if r["cos_newton"] == r["cos_newton"])
        first = lambda tol: next((r["step"] for r in rs if r["loss"] < tol), "")  # noqa: E731
        out.append({"method": method, "steps_run": rs[-1]["step"], "final_loss": rs[-1]["loss"],
                    "first_step_below_1e-6": first(1e-6), "first_step_below_1e-10": first(1e-10),
                    "median_cos_newton": cos[len(cos) // 2] if cos else math.nan,
                    "diverged": not (math.isfinite(rs[-1]["loss"]) and rs[-1]["loss"] <= DIVERGED)})
        print(f"  {method:18s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in list(out[-1].items())[1:]))
    write_csv(out, path)
    return out


def write_table_summaries(summary_rows, destination, command, args):
    """One results/runs/llqr_rosenbrock/<method>/ per method, in the shape `make tables` reads
    (results/paper/llqr_fig2_rosenbrock.yaml selects a method by choices.optimizer): summary.json, config.yaml
    (this run's settings, so the table can say which differ from the paper's) and command.txt."""
    for row in summary_rows:
        run = Path(destination) / row["method"]
        run.mkdir(parents=True, exist_ok=True)
        first = row["first_step_below_1e-6"]
        summary = {"experiment": "llqr_rosenbrock", "choices": {"optimizer": row["method"]}, "seed": 0,
                   "steps": row["steps_run"], "stopped": "diverged" if row["diverged"] else "max_steps",
                   "final": {"train/loss": row["final_loss"]}, "first_step_below_1e-6": first if first != "" else None,
                   "median_cos_newton": row["median_cos_newton"], "command": command}
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (run / "config.yaml").write_text(yaml.safe_dump(method_config(row["method"], args), sort_keys=False))
        (run / "command.txt").write_text(command + "\n")


def method_config(method, args):
    """The settings one method ran with: the outer loop for all, the inner solver for the LLQR relaxations."""
    config = {"start": list(args.start), "lr_out": args.lr_out, "steps": args.steps}
    if method.startswith("llqr_"):
        config.update(refit_every=int(method.split("_T")[1]), inner_steps=args.inner_steps, inner_lr=args.inner_lr,
                      clip=args.clip, ema_decay=args.ema_decay, min_scalar=args.min_scalar)
    return config


def settings(args):
    tag = lambda value, source: {"value": value, "source": source}  # noqa: E731
    return {
        "function": tag("R_{1,100}(x,y) = (1-x)^2 + 100(y-x^2)^2", "paper"),
        "start": tag(args.start, "ours (unknown in the paper, spec §7; the classical start)"),
        "outer_update": tag("theta <- theta + lr_out * u (SGD, no momentum)", "code: run_single_layer_test.py"),
        "lr_out": tag(args.lr_out, "code: run_single_layer_test.py learning_rate (paper: unknown)"
                      if args.lr_out == 5e-3 else "ours"),
        "steps": tag(args.steps, "ours (code script: 5000)"),
        "sweep_starts": tag(args.sweep_starts, "ours"),
        "refit_every": tag(args.refit_every, "ours (paper: 'several update frequencies', values unknown)"),
        "inner_steps": tag(args.inner_steps, "paper (500)" if args.inner_steps == 500 else "ours"),
        "inner_lr": tag(args.inner_lr, "paper (1e-4)" if args.inner_lr == 1e-4 else "ours"),
        "inner_solver": tag("SGD momentum 0.9, buffer reset each refit", "paper (SGDM) + code (0.9, reset)"),
        "clip": tag(args.clip, "code default precond_clip_norm 5.0" if args.clip == 5.0 else "ours"),
        "ema_decay": tag(args.ema_decay, "code default 0.0" if args.ema_decay == 0.0 else "ours"),
        "warm_start": tag(True, "code"),
        "init": tag("U = identity", "code"),
        "min_scalar_clip": tag(args.min_scalar, "code clips scalar/diag U >= 1e-8; off here = ours"
                               if args.min_scalar is None else "code"),
        "damping": tag(0.0, "code default"),
        "J(U)": tag("g^T u + 1/2 u^T H u from exact g, H (= LQR cost, spec §3 Theorem)", "ours (spec §4.1, §7)"),
        "diag_newton": tag("-g / |diag H|", "ours (the paper names a diagonal-Hessian Newton)"),
    }


# ------------------------------------------------------------------ figures (matplotlib, Agg)

GREENS = ["#a1d99b", "#74c476", "#31a354", "#006d2c", "#00441b"]


def _style(name, greens):
    if name == "newton":
        return {"color": "red", "lw": 3.0, "label": "Newton"}
    if name == "riccati":
        return {"color": "orange", "lw": 1.5, "ls": "--", "label": "exact LQR (Riccati)"}
    if name.startswith("llqr_scalar"):
        return {"color": greens.pop(), "lw": 1.2, "label": f"LLQR block-diag U, refit every {name.split('_T')[1]}"}
    if name.startswith("llqr_dense"):
        return {"color": "blue", "lw": 1.2, "label": "LLQR dense U, single layer"}
    return {"color": "violet", "lw": 1.2, "label": "diagonal-Hessian Newton"}


def _by_method(rows):
    out = defaultdict(list)
    for r in rows:
        out[r["method"]].append(r)
    return out


def plot_all(rows, fig_dir: Path, args):
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs = _by_method(rows)
    n_scalar = sum(1 for m in runs if m.startswith("llqr_scalar"))
    styles = {}
    greens = list(GREENS[-n_scalar:][::-1]) if n_scalar <= len(GREENS) else GREENS * 2
    for m in runs:
        styles[m] = _style(m, greens)
    title = f"start {tuple(args.start)}, lr_out {args.lr_out}, inner lr {args.inner_lr} x {args.inner_steps}"
    _plot_loss(runs, styles, fig_dir / "fig2_loss.png", title)
    _plot_trajectories(runs, styles, fig_dir / "fig4_trajectories.png", title)
    _plot_cosine(runs, styles, fig_dir / "fig4_cosine.png", title)


def _plot_loss(runs, styles, path, title):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, rs in runs.items():
        ax.semilogy([r["step"] for r in rs], [max(r["loss"], 1e-30) for r in rs], **styles[m])
    ax.set_xlabel("iteration")
    ax.set_ylabel("Rosenbrock value")
    ax.set_title(f"Fig. 2 analogue: {title}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_trajectories(runs, styles, path, title):
    fig, ax = plt.subplots(figsize=(6, 5))
    xs, ys = np.linspace(-2, 2, 400), np.linspace(-1, 3, 400)
    X, Y = np.meshgrid(xs, ys)
    Z = (1 - X) ** 2 + 100 * (Y - X ** 2) ** 2
    ax.contour(X, Y, np.log10(Z + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for m, rs in runs.items():
        if m.startswith("llqr_dense"):
            continue  # Fig. 4 left shows Newton, exact LQR, two-layer LLQR, diagonal-Hessian Newton
        ax.plot([r["x"] for r in rs], [r["y"] for r in rs], marker=".", ms=2, **styles[m])
    ax.plot([1], [1], "k*", ms=10)
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"Fig. 4 left analogue: {title}", fontsize=8)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_cosine(runs, styles, path, title):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, rs in runs.items():
        if m == "newton":
            continue
        pts = [(r["step"], r["cos_newton"]) for r in rs if r["cos_newton"] == r["cos_newton"]]
        style = dict(styles[m], lw=0.8 if m != "riccati" else 1.5)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], alpha=0.8, **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cos(update, -H^-1 g)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"Fig. 4 right analogue: {title}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_all(theta0, args, cfg, with_riccati=True):
    rows = run_exact("newton", R.newton_step, theta0, args)
    if with_riccati:
        rows += run_exact("riccati", R.riccati_step, theta0, args)
    for T in args.refit_every:
        rows += run_relaxed(f"llqr_scalar_T{T}", "scalar", T, theta0, args, cfg)
    rows += run_relaxed("llqr_dense_T1", "dense", 1, theta0, args, cfg)
    rows += run_exact("diag_newton", R.diag_newton_step, theta0, args)
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def sweep(args, cfg, run_dir):
    """Final loss of every method from ``--sweep-starts`` start points (robustness of the figure's ranking)."""
    gen = torch.Generator().manual_seed(0)
    starts = torch.rand(args.sweep_starts, 2, generator=gen, dtype=torch.float64) * 4 + torch.tensor([-2.0, -1.0])
    out = []
    for start in starts:
        print(f"start {start.tolist()}", flush=True)
        for method, rs in _by_method(run_all(start, args, cfg, with_riccati=False)).items():
            last = rs[-1]
            out.append({"start_x": float(start[0]), "start_y": float(start[1]), "method": method,
                        "steps_run": last["step"], "final_loss": last["loss"],
                        "diverged": not (math.isfinite(last["loss"]) and last["loss"] <= DIVERGED)})
    write_csv(out, run_dir / "sweep.csv")
    print(f"wrote {run_dir}/sweep.csv")


def main(argv=None):
    """Runs in float64 (the comparisons down to 1e-10 need it), leaving torch's default dtype as it found it."""
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        run_and_write(parse_args(argv), argv)
    finally:
        torch.set_default_dtype(previous_dtype)


def run_and_write(args, argv):
    cfg = R.InnerConfig(steps=args.inner_steps, lr=args.inner_lr, clip=args.clip,
                        ema_decay=args.ema_decay, min_scalar=args.min_scalar)
    run_dir, fig_dir = Path(args.run_dir), Path(args.fig_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.sweep_starts:
        return sweep(args, cfg, run_dir)
    rows = run_all(torch.tensor(args.start, dtype=torch.float64), args, cfg)
    write_csv(rows, run_dir / "trajectories.csv")
    summary_rows = write_summary(rows, run_dir / "summary.csv")
    if args.table_dir:
        write_table_summaries(summary_rows, args.table_dir, "OMP_NUM_THREADS=1 python -m scripts.rosenbrock_llqr "
                              + " ".join(argv if argv is not None else sys.argv[1:]), args)
    (run_dir / "settings.json").write_text(json.dumps(settings(args), indent=1) + "\n")
    plot_all(rows, fig_dir, args)
    print(f"wrote {run_dir}/trajectories.csv, summary.csv, settings.json and PNGs in {fig_dir}")


if __name__ == "__main__":
    main()
