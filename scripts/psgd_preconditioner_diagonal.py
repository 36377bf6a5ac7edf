"""What a PSGD run's preconditioner learned: quantiles of diag(P), P = QᵀQ, read from checkpoints.

For each preconditioner in the checkpoint's optimizer state (one per flat group, one per Kronecker block) it
prints the number of coordinates and the 1st, 50th and 99th percentiles and the extremes of P's diagonal. A P
that stayed at its initial c·I (c = preconditioner_init_scale²) has all of them at c: PSGD then took plain SGD(-
momentum) steps with step size lr·c. Reads checkpoints only; never trains.

    python -m scripts.psgd_preconditioner_diagonal outputs/<run>/checkpoints/step_00005000.pt
"""

import argparse

import torch

from psgd.optimizer import p_diagonal_of

QUANTILES = (0.01, 0.5, 0.99)
MAX_SAMPLE = 1 << 20  # torch.quantile needs a sample of at most 2²⁴ entries; 2²⁰ keeps it quick


def diagonal_summary(diagonal, generator):
    """(n, min, the QUANTILES, max) of one diag(P); quantiles from a uniform sample when it is very long."""
    flat = diagonal.detach().reshape(-1).double()
    sample = flat if flat.numel() <= MAX_SAMPLE else flat[torch.randint(flat.numel(), (MAX_SAMPLE,), generator=generator)]
    quantiles = torch.quantile(sample, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    return (flat.numel(), flat.min().item(), *quantiles, flat.max().item())


def checkpoint_rows(path, generator):
    """One (state index, summary) per preconditioner in a training checkpoint (train.py's layout)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    optimizer_state = checkpoint.get("optimizer", {}).get("state", {})
    rows = []
    for index, state in optimizer_state.items():
        diagonal = p_diagonal_of(state)
        if diagonal is not None:
            rows.append((index, diagonal_summary(diagonal, generator)))
    if not rows:
        raise SystemExit(f"{path}: no PSGD preconditioner in the optimizer state (not a PSGD run's checkpoint?)")
    return checkpoint.get("step"), rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (<run>/checkpoints/step_*.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample behind the quantiles of long P")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    header = f"{'state':>5} {'n':>10} {'min':>10} " + " ".join(f"{f'q{q:g}':>10}" for q in QUANTILES) + f" {'max':>10}"
    for path in args.checkpoints:
        step, rows = checkpoint_rows(path, generator)
        print(f"{path} (step {step}): diag(P)")
        print(header)
        for index, (n, *values) in rows:
            print(f"{index:>5} {n:>10} " + " ".join(f"{v:>10.4g}" for v in values))


if __name__ == "__main__":
    main()
