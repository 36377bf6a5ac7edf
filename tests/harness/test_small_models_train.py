"""Every small model trains a few steps with SGD and with AdamW, and its loss goes down."""

import json

import pytest

from tests.harness.helpers import run

# (model, dataset, extra overrides, steps, sgd lr, adamw lr)
SMALL_TASKS = [
    ("mlp", "digits", [], 30, 0.05, 3e-3),
    ("logistic_regression", "digits", [], 30, 0.05, 3e-3),
    ("lenet5", "digits", [], 30, 0.05, 3e-3),
    ("mlp", "modular_arithmetic", ["dataset.p=11", "dataset.batch_size=32"], 40, 0.05, 3e-3),
    ("xor_rnn", "delayed_xor", ["dataset.seq_len=4", "dataset.batch_size=64", "dataset.eval_size=256"], 40, 0.5, 1e-2),
    ("xor_lstm", "delayed_xor", ["dataset.seq_len=4", "dataset.batch_size=64", "dataset.eval_size=256"], 40, 0.5, 1e-2),
    ("rosenbrock", "rosenbrock", ["model.start=[-1.2,1.0]"], 20, 1e-4, 1e-2),
]


def train_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("model,dataset,extra,steps,sgd_lr,adamw_lr", SMALL_TASKS, ids=[f"{m}-{d}" for m, d, *_ in SMALL_TASKS])
def test_loss_goes_down(tmp_path, optimizer, model, dataset, extra, steps, sgd_lr, adamw_lr):
    lr = sgd_lr if optimizer == "sgd" else adamw_lr
    overrides = [f"model={model}", f"dataset={dataset}", f"optimizer={optimizer}", f"optimizer.lr={lr}",
                 "schedule=constant", f"trainer.max_steps={steps}", *extra]
    _, summary = run(overrides, tmp_path)
    losses = train_losses(tmp_path)
    assert len(losses) == steps
    window = max(steps // 5, 1)
    assert sum(losses[-window:]) / window < 0.97 * sum(losses[:window]) / window, losses
    assert summary["steps"] == steps and summary["ms_per_step"] > 0


def test_run_directory_contents(tmp_path):
    _, summary = run(["model=mlp", "dataset=digits", "optimizer=sgd", "optimizer.lr=0.05", "trainer.max_steps=5"], tmp_path)
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "summary.json").is_file()
    assert list((tmp_path / "checkpoints").glob("step_*.pt")), "a checkpoint is written at the end"
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final", "best", "ms_per_step", "peak_memory_mb", "seed", "git_commit", "git_dirty", "host", "device", "torch_version"):
        assert key in saved, key
    assert saved["final"]["val/accuracy"] == summary["final"]["val/accuracy"]
