"""Test helpers: compose and run in-process, quietly and without intermediate checkpoints."""

from harness.compose import CONFIGS, REPO_ROOT, compose_config, run_config  # noqa: F401

SMALL = ["trainer.progress=false", "checkpoint.every=0", "trainer.log_every=1"]


def run(overrides, run_dir):
    """Like `python train.py <overrides>` into `run_dir`, with the quiet defaults above first."""
    return run_config(SMALL + list(overrides), run_dir)


class Interrupted(Exception):
    """A simulated crash."""


def run_crashed_then_resumed(overrides, run_dir, monkeypatch, crash_at_step, dataset_class=None):
    """Run until `dataset_class.train_batch(crash_at_step)` raises (a crash after the last checkpoint), then run the
    same overrides again in `run_dir`, which resumes from that checkpoint; returns the second run's summary."""
    from harness.data.base import ArrayDataset

    dataset_class = dataset_class or ArrayDataset
    original = dataset_class.train_batch

    def crashing(self, step):
        if step == crash_at_step:
            raise Interrupted(f"simulated crash at step {crash_at_step}")
        return original(self, step)

    monkeypatch.setattr(dataset_class, "train_batch", crashing)
    try:
        run(overrides, run_dir)
    except Interrupted:
        pass
    else:
        raise AssertionError(f"the run did not reach step {crash_at_step}, so nothing was resumed")
    monkeypatch.setattr(dataset_class, "train_batch", original)
    return run(overrides, run_dir)[1]
