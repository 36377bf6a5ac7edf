"""Composing configs without the command line (Hydra's compose API), as tests and scripts need.

`run_config(overrides, run_dir)` trains exactly what `python train.py <overrides>` would, in-process.
"""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def compose_config(overrides, return_hydra_config=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def prepare(cfg, choices):
    """Record the group choices and a default experiment name in the config itself (as train.py does)."""
    with open_dict(cfg):
        cfg.choices = {group: choice for group, choice in choices.items() if not group.startswith("hydra") and choice}
        if not cfg.experiment_name:
            cfg.experiment_name = default_experiment_name(cfg, choices)
    return cfg


def default_experiment_name(cfg, choices):
    """<model>-<dataset>-<optimizer> for supervised training; a task that trains on something else names itself by
    what it trains on (PPO: ppo-<env_id>-<optimizer>), since the unused model and dataset groups keep their defaults."""
    task = cfg.get("task") or {}
    if task.get("name", "supervised") == "supervised":
        return f"{choices['model']}-{choices['dataset']}-{choices['optimizer']}"
    subject = f"{task.name}-{task.env_id}" if task.get("env_id") else task.name
    return f"{subject}-{choices['optimizer']}"


def composed_run_config(overrides):
    """The config `python train.py <overrides>` would train, with its choices recorded."""
    full = compose_config(overrides, return_hydra_config=True)
    choices = dict(full.hydra.runtime.choices)
    return prepare(compose_config(overrides), choices)


def run_config(overrides, run_dir):
    """Train the config of `overrides` into `run_dir`; returns (cfg, summary)."""
    from harness.tasks import run_task

    cfg = composed_run_config(overrides)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return cfg, run_task(cfg, run_dir)
