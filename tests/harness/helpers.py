"""Test helpers: compose and run in-process, quietly and without intermediate checkpoints."""

from harness.compose import CONFIGS, REPO_ROOT, compose_config, run_config  # noqa: F401

SMALL = ["trainer.progress=false", "checkpoint.every=0", "trainer.log_every=1"]


def run(overrides, run_dir):
    """Like `python train.py <overrides>` into `run_dir`, with the quiet defaults above first."""
    return run_config(SMALL + list(overrides), run_dir)
