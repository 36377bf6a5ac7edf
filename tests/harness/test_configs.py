"""Every experiment preset and every option of every config group composes."""

import pytest

from tests.harness.helpers import CONFIGS, compose_config

GROUPS = ["task", "model", "dataset", "optimizer", "schedule", "logger"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.experiment_name, f"experiment {experiment} must set experiment_name"
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_"), "presets are global packages"
    assert any(word in text for word in ("Table", "Fig", "table", "figure", "demo", "Demo")), "presets name their source"


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_launchers_compose(launcher):
    cfg = compose_config([f"hydra/launcher={launcher}", "optimizer=sgd"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_


def test_readme_command_composes_exactly_as_written():
    cfg = compose_config(["optimizer=adamw", "model=resnet18"])
    assert cfg.dataset.name == "cifar10"
    assert cfg.optimizer._target_ == "torch.optim.AdamW"


def test_unknown_option_lists_the_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as error:
        compose_config(["optimizer=no_such_optimizer"])
    assert "Available options" in str(error.value) and "adamw" in str(error.value)
