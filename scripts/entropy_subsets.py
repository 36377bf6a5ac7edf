"""Rank a trained oracle's training points by prediction entropy (PSGD paper E.4, Table 11).

"We train an oracle LeNet5 on the full MNIST dataset for 20 epochs, we categorize the train set into two subsets;
a high entropy subset and a low entropy subset, each consisting of 10k points. The entropy is defined over the
softmax of the logits." This script loads the oracle run's newest checkpoint (with the model and dataset of its
config.yaml), computes the softmax entropy of every training point and writes an .npz with the indices of the
`--size` lowest (`low_entropy`) and highest (`high_entropy`), and all entropies (`entropy`). Training runs then
read it through `dataset.entropy_subsets=<file> dataset.train_on=low_entropy|high_entropy|all`.

    python -m scripts.entropy_subsets outputs/table11_oracle --out outputs/table11_oracle/entropy_subsets.npz
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from harness.atomic import replace_from_temporary
from harness.checkpoint import CheckpointManager
from harness.data import DataPaths, build_dataset
from harness.metrics import prediction_entropy
from harness.models import build_model


def oracle_entropies(run_dir, device="cpu"):
    """Per-training-point softmax entropy under the run's newest checkpoint, in the dataset's stored order."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise SystemExit(f"{run_dir}: no config.yaml (not a run directory written by train.py)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint, path = CheckpointManager(run_dir).load_latest()
    if checkpoint is None:
        raise SystemExit(f"{run_dir}: no readable checkpoint under checkpoints/ (run with checkpoint.at_end=true)")
    dataset = build_dataset(cfg.dataset, DataPaths.from_config(cfg.data), cfg.seed)
    if not hasattr(dataset, "train_x"):
        raise SystemExit(f"{run_dir}: dataset {cfg.dataset.name!r} holds no training array to rank")
    model = build_model(cfg.model, dataset.info).to(device)
    model.load_state_dict(checkpoint["model"])
    print(f"{path} (step {checkpoint['step']}): ranking {len(dataset.train_x)} training points")
    return prediction_entropy(model, dataset.train_x, device)


def split_by_entropy(entropy, size):
    """Indices of the `size` lowest- and highest-entropy points (ties broken by index, stable)."""
    if not 0 < size <= len(entropy) // 2:
        raise SystemExit(f"--size {size} must be between 1 and half the training set ({len(entropy) // 2})")
    order = torch.argsort(entropy, stable=True)
    return order[:size].sort().values, order[-size:].sort().values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("oracle_run", help="run directory of the oracle (config.yaml and checkpoints/)")
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--size", type=int, default=10_000, help="points per subset (the paper's 10k)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    entropy = oracle_entropies(args.oracle_run, torch.device(args.device))
    low, high = split_by_entropy(entropy, args.size)

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, low_entropy=low.numpy(), high_entropy=high.numpy(), entropy=entropy.numpy())

    replace_from_temporary(write, Path(args.out))
    print(f"wrote {args.out}: mean entropy {entropy[low].mean():.3g} on the {args.size} lowest, "
          f"{entropy[high].mean():.3g} on the {args.size} highest, {entropy.mean():.3g} overall (nats)")


if __name__ == "__main__":
    main()
