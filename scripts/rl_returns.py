"""Reward curves of PPO runs over seeds (the PSGD paper's Fig. 1 layout): one panel per environment, one
line per optimizer, the mean over seeds of the smoothed episode return against environment steps, with a band
of ± one (sample) standard deviation. Reads only each run directory's metrics.jsonl and config.yaml; never trains.

    python -m scripts.rl_returns multirun/2026-11-23/*/ --out results/figures/fig1_ppo.png
    python -m scripts.rl_returns outputs --window 10 --points 100

It also prints, per environment and optimizer, the final smoothed return (mean ± sample std over seeds).
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf


def find_runs(paths):
    """Run directories (holding metrics.jsonl and config.yaml) at or below the given paths."""
    runs = set()
    for path in map(Path, paths):
        candidates = [path] if (path / "metrics.jsonl").exists() else [p.parent for p in path.rglob("metrics.jsonl")]
        runs.update(c for c in candidates if (c / "config.yaml").exists())
    return sorted(runs)


def run_key(run_dir):
    """(environment, optimizer label, seed) of a PPO run, or None for other tasks."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.get("task", {}).get("name") != "ppo":
        return None
    label = (cfg.get("choices") or {}).get("optimizer") or cfg.optimizer._target_.rsplit(".", 1)[-1]
    critic = cfg.task.get("critic_optimizer")
    if critic is not None:
        label += f" / critic {critic._target_.rsplit('.', 1)[-1]}"
    return cfg.task.env_id, label, cfg.seed


def episode_curve(run_dir, window):
    """(steps, returns smoothed over the last `window` episodes) from a run's metrics.jsonl."""
    steps, returns = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "episode/return" in record:
            steps.append(record["step"])
            returns.append(record["episode/return"])
    if not returns:
        return np.array([]), np.array([])
    returns = np.asarray(returns, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(returns)])
    lower = np.maximum(np.arange(1, len(returns) + 1) - window, 0)
    smoothed = (cumulative[1:] - cumulative[lower]) / (np.arange(1, len(returns) + 1) - lower)
    return np.asarray(steps, dtype=float), smoothed


def collect(paths, window):
    """{env: {label: {seed: (steps, smoothed returns)}}}."""
    curves = defaultdict(lambda: defaultdict(dict))
    for run_dir in find_runs(paths):
        key = run_key(run_dir)
        if key is None:
            continue
        steps, smoothed = episode_curve(run_dir, window)
        if len(steps):
            env, label, seed = key
            curves[env][label][seed] = (steps, smoothed)
    return curves


def on_grid(seed_curves, points):
    """Each seed's curve interpolated on a common grid up to the shortest run's last episode."""
    end = min(steps[-1] for steps, _ in seed_curves.values())
    start = max(steps[0] for steps, _ in seed_curves.values())
    grid = np.linspace(start, end, points) if end > start else np.array([end])
    return grid, np.stack([np.interp(grid, steps, values) for steps, values in seed_curves.values()])


def sample_std(values):
    """Standard deviation over seeds (axis 0) with Bessel's correction, as make_tables reports; 0 for one seed."""
    return values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(values[0])


def summary_table(curves):
    lines = [f"{'environment':<18} {'optimizer':<28} {'seeds':>5} {'steps':>9}  final smoothed return"]
    for env in sorted(curves):
        for label in sorted(curves[env]):
            seeds = curves[env][label]
            finals = np.array([values[-1] for _, values in seeds.values()])
            steps = min(int(s[-1]) for s, _ in seeds.values())
            lines.append(f"{env:<18} {label:<28} {len(seeds):>5} {steps:>9}  {finals.mean():9.1f} ± {float(sample_std(finals)):.1f}")
    return "\n".join(lines)


def plot(curves, out, points):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted(curves)
    labels = sorted({label for env in envs for label in curves[env]})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one colour per optimizer in every panel
    figure, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for axis, env in zip(axes[0], envs):
        for label in sorted(curves[env]):
            grid, values = on_grid(curves[env][label], points)
            mean, std = values.mean(0), sample_std(values)
            axis.plot(grid, mean, color=colors[label], label=f"{label} ({values.shape[0]} seeds)")
            axis.fill_between(grid, mean - std, mean + std, color=colors[label], alpha=0.2)
        axis.set(title=env, xlabel="environment steps", ylabel="episode return")
        axis.legend(fontsize=8)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (searched recursively)")
    parser.add_argument("--out", default="results/figures/ppo_returns.png")
    parser.add_argument("--window", type=int, default=10, help="episodes in the moving average")
    parser.add_argument("--points", type=int, default=200, help="grid points of the interpolated curves")
    args = parser.parse_args(argv)
    curves = collect(args.paths, args.window)
    if not curves:
        raise SystemExit(f"no PPO runs (metrics.jsonl with episode returns) under {args.paths}")
    print(summary_table(curves))
    plot(curves, args.out, args.points)


if __name__ == "__main__":
    main()
