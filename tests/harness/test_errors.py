"""Bad input gets a clear, one-line error naming what was wrong and how to fix it."""

import json
import subprocess
import sys

import pytest
import torch

from harness.errors import ConfigError, DataNotFoundError, NonFiniteLossError
from tests.harness.helpers import REPO_ROOT, run

DIGITS = ["model=mlp", "dataset=digits", "trainer.max_steps=3"]


def test_negative_learning_rate_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.lr=-0\.1 is invalid"):
        run([*DIGITS, "optimizer=sgd", "optimizer.lr=-0.1"], tmp_path)


def test_unknown_schedule_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"schedule\.name='warp' is not a schedule; choose one of"):
        run([*DIGITS, "schedule.name=warp"], tmp_path)


def test_unknown_model_option_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.depth is not an option of model 'mlp'"):
        run([*DIGITS, "+model.depth=3"], tmp_path)


def test_model_that_does_not_fit_the_dataset(tmp_path):
    with pytest.raises(ConfigError, match="does not fit this dataset"):
        run(["model=lenet5", "dataset=delayed_xor", "trainer.max_steps=1"], tmp_path)


def test_optimizer_constructor_error_is_reported_as_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer torch\.optim\.AdamW: .*beta"):
        run([*DIGITS, "optimizer=adamw", "optimizer.betas=[1.5,0.999]"], tmp_path)


def test_missing_data_offline_names_dataset_path_and_fix(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("REPRO_DATA_MIRROR", raising=False)
    with pytest.raises(DataNotFoundError) as error:
        run(["model=resnet18", "dataset=cifar10", "data.download=false", "trainer.max_steps=1"], tmp_path)
    message = str(error.value)
    assert "CIFAR-10" in message and str(data_root) in message and "REPRO_DATA_MIRROR" in message


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    overrides = ["model=rosenbrock", "dataset=rosenbrock", "optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0",
                 "schedule=constant", "trainer.max_steps=50", "checkpoint.every=1", "checkpoint.keep=2"]
    with pytest.raises(NonFiniteLossError, match=r"the loss is (nan|inf) at step \d+; training stopped. Last good checkpoint: .*step_"):
        run(overrides, tmp_path)
    newest = sorted((tmp_path / "checkpoints").glob("step_*.pt"))[-1]
    payload = torch.load(newest, weights_only=True)
    assert torch.isfinite(payload["model"]["xy"]).all(), "the checkpoints written are finite"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "non_finite_loss", "a success-rate table must see the divergence"


def test_train_py_prints_one_line_error_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", *DIGITS, "optimizer=sgd", "optimizer.lr=-1", f"hydra.run.dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: optimizer.lr=-1 is invalid: it must be >= 0"]
    assert not list(tmp_path.glob("checkpoints/*")), "nothing was trained"
