"""Sweep definitions are data; every job of every sweep composes; a 2x2 sweep runs locally."""

import json
import os
import subprocess
import sys

import pytest

from harness.compose import REPO_ROOT, compose_config
from harness.errors import ConfigError
from scripts.collect_runs import collect
from scripts.sweep import SWEEPS, jobs_of, load_sweep, main

ALL_SWEEPS = sorted(p.stem for p in SWEEPS.glob("*.yaml"))


@pytest.mark.parametrize("sweep", ALL_SWEEPS)
def test_every_job_of_every_sweep_composes(sweep):
    spec = load_sweep(sweep)
    seen = set()
    for _, overrides in jobs_of(spec):
        key = tuple(o for o in overrides if not o.startswith("seed="))
        if key not in seen:
            seen.add(key)
            compose_config(overrides)


def test_dry_run_lists_the_jobs(capsys):
    assert main(["demo_grid", "--dry-run"]) == []
    lines = [line for line in capsys.readouterr().out.splitlines() if "python train.py" in line]
    assert len(lines) == 4
    assert "optimizer=sgd seed=0 experiment=demo_xor" in lines[0] and "optimizer=adamw seed=1" in lines[3]


def test_malformed_sweep_names_file_and_key(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.sweep.SWEEPS", tmp_path)
    (tmp_path / "bad.yaml").write_text("grid:\n  seed: [0]\nresource:\n  gpus: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'resource'"):
        load_sweep("bad")
    (tmp_path / "bad.yaml").write_text("grid:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: grid\.seed must be a non-empty list"):
        load_sweep("bad")


@pytest.mark.slow
def test_two_by_two_sweep_with_the_hydra_local_launcher(tmp_path):
    command = [sys.executable, "train.py", "-m", "hydra/launcher=local", "experiment=demo_xor", "optimizer=sgd,adamw",
               "seed=0,1", "trainer.max_steps=30", "trainer.progress=false", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(tmp_path.rglob("summary.json"))
    assert len(summaries) == 4
    optimizers = sorted((json.loads(p.read_text())["optimizer"], json.loads(p.read_text())["seed"]) for p in summaries)
    assert optimizers == [("torch.optim.AdamW", 0), ("torch.optim.AdamW", 1), ("torch.optim.SGD", 0), ("torch.optim.SGD", 1)]
    copied = collect([tmp_path], tmp_path / "results")
    assert len(copied) == 4 and all((c / "summary.json").is_file() and (c / "config.yaml").is_file() for c in copied)
