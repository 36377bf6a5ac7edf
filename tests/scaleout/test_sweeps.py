"""Sweep definitions are data (plain values and bundles of overrides); a 2x2 sweep runs locally. The paper sweeps' own
checks are in test_paper_sweeps.py."""

import json
import os
import subprocess
import sys

import pytest

from harness.compose import REPO_ROOT
from harness.errors import ConfigError
from scripts.collect_runs import collect
from scripts.sweep import jobs_of, load_sweep, main


def test_dry_run_lists_the_jobs(capsys):
    assert main(["demo_grid", "--dry-run"]) == []
    lines = [line for line in capsys.readouterr().out.splitlines() if "python train.py" in line]
    assert len(lines) == 4
    assert "optimizer=sgd seed=0 experiment=demo_xor" in lines[0] and "optimizer=adamw seed=1" in lines[3]
    assert main([str(REPO_ROOT / "slurm" / "sweeps" / "demo_grid.yaml"), "--dry-run"]) == []  # a path works too
    by_path = capsys.readouterr().out
    assert by_path.startswith("sweep demo_grid: 4 jobs") and lines[0] in by_path


def test_malformed_sweep_names_file_and_key(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.sweep.SWEEPS", tmp_path)
    (tmp_path / "bad.yaml").write_text("grid:\n  seed: [0]\nresource:\n  gpus: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'resource'"):
        load_sweep("bad")
    (tmp_path / "bad.yaml").write_text("grid:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: grid\.seed must be a non-empty list"):
        load_sweep("bad")


def test_bundles_set_overrides_together_and_name_jobs_by_their_choices(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.sweep.SWEEPS", tmp_path)
    (tmp_path / "b.yaml").write_text(
        "grid:\n  setup:\n    - sgd_label\n    - {optimizer: psgd_lra, optimizer.rank: 5, ~optimizer.betas: null,"
        " optimizer.betas: [0.9, 0.99], trainer.deterministic: true}\n  seed: [0, 1]\nfixed: {experiment: demo_xor}\n")
    jobs = list(jobs_of(load_sweep("b")))
    assert jobs[0] == ("setup=sgd_label,seed=0", ["setup=sgd_label", "seed=0", "experiment=demo_xor"])
    assert jobs[3] == ("optimizer=psgd_lra,seed=1",
                       ["optimizer=psgd_lra", "optimizer.rank=5", "~optimizer.betas", "optimizer.betas=[0.9,0.99]",
                        "trainer.deterministic=true", "seed=1", "experiment=demo_xor"])


def test_bundles_that_share_their_choices_are_named_in_full(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.sweep.SWEEPS", tmp_path)
    (tmp_path / "b.yaml").write_text("grid:\n  opt:\n    - {optimizer: sgd, optimizer.lr: 0.1}\n"
                                     "    - {optimizer: sgd, optimizer.lr: 0.2}\n")
    assert [name for name, _ in jobs_of(load_sweep("b"))] == ["optimizer=sgd,optimizer.lr=0.1", "optimizer=sgd,optimizer.lr=0.2"]


@pytest.mark.parametrize("text, message", [
    ("grid:\n  a: [{optimizer: {lr: 1}}]\n", r"b\.yaml: grid\.a\[0\] is a bundle and must map override keys to plain"),
    ("grid:\n  a: [{}]\n", r"b\.yaml: grid\.a\[0\] is a bundle"),
    ("grid:\n  a: [[1, 2]]\n", r"b\.yaml: grid\.a must be a non-empty list of plain values"),
    ("grid:\n  a: [{seed: 1}]\n  seed: [0]\n", r"b\.yaml: job seed=1,seed=0 sets seed more than once"),
    ("grid:\n  a: [{optimizer: sgd}]\nfixed: {optimizer: adamw}\n", r"b\.yaml: job optimizer=sgd sets optimizer more than once"),
    ("grid:\n  seed: [1, 1]\n", r"b\.yaml: two jobs are named seed=1"),
    ("grid:\n  a: [{y.z: " + "9" * 300 + "}]\n", r"b\.yaml: job name .* is longer than 255 bytes"),
])
def test_malformed_bundles_and_clashing_jobs_name_file_and_key(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr("scripts.sweep.SWEEPS", tmp_path)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sweep("b")


def test_collect_refuses_two_runs_that_would_land_in_the_same_folder(tmp_path, capsys):
    for root in ("full", "reduced"):  # e.g. a 20-epoch and a 2-epoch run, both named by their sweep "optimizer=sgd,seed=0"
        run = tmp_path / root / "optimizer=sgd,seed=0"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"experiment": "e3", "seed": 0}))
    with pytest.raises(ValueError, match=r"two runs would both be copied to .*e3/optimizer=sgd,seed=0: .*full/"
                                         r"optimizer=sgd,seed=0 and .*reduced/optimizer=sgd,seed=0; rename one"):
        collect([tmp_path / "full", tmp_path / "reduced"], tmp_path / "results")
    assert not (tmp_path / "results").exists()  # nothing copied
    from scripts.collect_runs import main as collect_main
    assert collect_main([str(tmp_path / "full"), str(tmp_path / "reduced"), "--dest", str(tmp_path / "r")]) == 2
    assert "error: two runs would both be copied" in capsys.readouterr().err


@pytest.mark.slow
def test_two_by_two_sweep_with_the_hydra_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"  # the collected copies go beside it, not into it
    command = [sys.executable, "train.py", "-m", "hydra/launcher=local", "experiment=demo_xor", "optimizer=sgd,adamw",
               "seed=0,1", "trainer.max_steps=30", "trainer.progress=false", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 4
    optimizers = sorted((json.loads(p.read_text())["optimizer"], json.loads(p.read_text())["seed"]) for p in summaries)
    assert optimizers == [("torch.optim.AdamW", 0), ("torch.optim.AdamW", 1), ("torch.optim.SGD", 0), ("torch.optim.SGD", 1)]
    copied = collect([sweep], tmp_path / "results")
    assert len(copied) == 4 and all((c / "summary.json").is_file() and (c / "config.yaml").is_file() for c in copied)
    assert not any((c / "metrics.jsonl").exists() for c in copied), "metrics are copied only when asked"
    commands = sorted((c / "command.txt").read_text().split() for c in copied)
    assert commands[0][:2] == ["python", "train.py"] and "optimizer=adamw" in commands[0] and "seed=0" in commands[0]
    copied = collect([sweep], tmp_path / "with_metrics", with_metrics=True)
    assert all((c / "metrics.jsonl").read_text().strip() for c in copied)
