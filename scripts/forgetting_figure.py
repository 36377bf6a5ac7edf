"""Entropy against forgettability, per training example (the PSGD paper's Fig. 7 and Table 10): one panel per run,
the distribution of the final softmax entropy (log scale) of the examples forgotten 0, 1, 2, ... times and of those
never learned, as box plots with each group's size. Reads each run directory's example_stats.npz (written by
`trainer.example_stats=true`) and config.yaml; never trains.

    python -m scripts.forgetting_figure outputs/sweeps/psgd_forgetting/*seed=0 --out results/figures/psgd_fig7.png

It also prints, per run, the examples' forgetting-score distribution and the Spearman correlation of the two.
"""

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from omegaconf import OmegaConf

from harness.example_stats import STATS_FILE, entropy_forgetting_correlations

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def load(run_dir):
    """(label, entropy, forgetting scores) of a run: its optimizer choice and seed, and two arrays."""
    run_dir = Path(run_dir)
    if not (run_dir / STATS_FILE).is_file():
        raise SystemExit(f"{run_dir}: no {STATS_FILE} (train with trainer.example_stats=true)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    optimizer = (cfg.get("choices") or {}).get("optimizer") or cfg.optimizer._target_.rsplit(".", 1)[-1]
    with np.load(run_dir / STATS_FILE) as stored:
        return f"{optimizer}, seed {cfg.seed}", stored["entropy"], stored["forgetting"]


def describe(label, entropy, scores):
    """One line: forgetting-score counts and Spearman's rho (never-learned examples ranked most forgettable)."""
    finite = np.isfinite(scores)
    correlations = entropy_forgetting_correlations(torch.from_numpy(entropy), torch.from_numpy(scores))
    unforgettable, never = int((scores == 0).sum()), int((~finite).sum())
    return (f"{label}: {len(scores)} examples, {unforgettable} unforgettable, {never} never learned, "
            f"max {int(scores[finite].max()) if finite.any() else 0} forgetting events; "
            f"Spearman rho(entropy, forgetting) = {correlations['forgetting/spearman']:.3f}")


def groups(entropy, scores, most=3):
    """(label, entropies) per forgetting count 0 .. most−1, `most`+ together, and never learned; empty ones left out."""
    finite = np.isfinite(scores)
    masks = [(str(k), finite & (scores == k)) for k in range(most)]
    masks += [(f"{most}+", finite & (scores >= most)), ("never\nlearned", ~finite)]
    return [(label, entropy[mask]) for label, mask in masks if mask.any()]


def figure(runs, out):
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), squeeze=False, sharey=True)
    for ax, (label, entropy, scores) in zip(axes[0], runs):
        parts = groups(entropy, scores)
        floor = np.finfo(np.float64).tiny  # an entropy of exactly 0 (a one-hot softmax) still plots on a log axis
        ax.boxplot([np.maximum(values, floor) for _, values in parts], whis=(5, 95), showfliers=False)
        ax.set_xticks(range(1, len(parts) + 1), [f"{name}\n({len(values)})" for name, values in parts])
        ax.set(yscale="log", xlabel="forgetting events (examples)", title=label)
    axes[0][0].set_ylabel("final softmax entropy (nats)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding example_stats.npz")
    parser.add_argument("--out", type=Path, help="the PNG to write (none: print only)")
    args = parser.parse_args(argv)
    runs = [load(run) for run in args.runs]
    for run in runs:
        print(describe(*run))
    if args.out is not None:
        figure(runs, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
