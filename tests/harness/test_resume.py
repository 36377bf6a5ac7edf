"""A resumed run continues exactly where it stopped (torch.equal on every parameter)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.harness.helpers import REPO_ROOT, run, run_crashed_then_resumed

N = 6
TASK = ["model=mlp", "dataset=digits", "schedule=cosine", f"trainer.max_steps={2 * N}", f"checkpoint.every={N}", "trainer.eval_every=4"]


def final_parameters(run_dir):
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(newest, weights_only=True)["model"]


@pytest.mark.parametrize("optimizer", [["optimizer=sgd"], ["optimizer=adamw"],
                                       ["optimizer=adamw", "trainer.grad_accumulation=4", "+optimizer.weight_decay_on=matrices"]])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, optimizer):
    run([*TASK, *optimizer], tmp_path / "straight")
    summary = run_crashed_then_resumed([*TASK, *optimizer], tmp_path / "resumed", monkeypatch, crash_at_step=N + 1)

    straight, resumed = final_parameters(tmp_path / "straight"), final_parameters(tmp_path / "resumed")
    assert summary["steps"] == 2 * N
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps_logged = [json.loads(line).get("step") for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    straight_logged = [json.loads(line).get("step") for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == straight_logged, "metrics after the checkpoint are logged once, not twice"


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    run([*TASK, "optimizer=sgd", "checkpoint.at_end=false", "checkpoint.keep=3", f"trainer.max_steps={2 * N + 1}"], tmp_path / "a")
    checkpoints = sorted((tmp_path / "a" / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in checkpoints] == [f"step_{N:08d}.pt", f"step_{2 * N:08d}.pt"]
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:100])  # truncate the newest
    with pytest.warns(UserWarning, match="unreadable"):
        _, summary = run([*TASK, "optimizer=sgd", f"trainer.max_steps={2 * N + 1}"], tmp_path / "a")
    assert summary["steps"] == 2 * N + 1


def _train_process(run_dir, steps):
    command = [sys.executable, "train.py", "model=lenet5", "dataset=digits", "optimizer=adamw", "schedule=cosine",
               f"trainer.max_steps={steps}", "checkpoint.every=20", "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    steps = 300
    straight = _train_process(tmp_path / "straight", steps)
    killed = _train_process(tmp_path / "killed", steps)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000100.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be killed; make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = _train_process(tmp_path / "killed", steps)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    a, b = final_parameters(tmp_path / "straight"), final_parameters(tmp_path / "killed")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_init_from_starts_from_another_runs_weights(tmp_path):
    from harness.errors import ConfigError

    run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=5"], tmp_path / "first")
    start = final_parameters(tmp_path / "first")
    _, summary = run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=1", "optimizer.lr=0",
                      f"trainer.init_from={tmp_path / 'first'}"], tmp_path / "second")
    second = final_parameters(tmp_path / "second")
    for name in start:  # lr 0: the second run ends where it started
        assert torch.equal(start[name], second[name]), name
    newest = sorted((tmp_path / "first" / "checkpoints").glob("step_*.pt"))[-1]
    run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=1", "optimizer.lr=0",
         f"trainer.init_from={newest}"], tmp_path / "from_file")
    assert all(torch.equal(start[n], final_parameters(tmp_path / "from_file")[n]) for n in start)
    fresh = run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=1", "optimizer.lr=0"],
                tmp_path / "fresh")
    assert not all(torch.equal(start[n], final_parameters(tmp_path / "fresh")[n]) for n in start) and fresh
    with pytest.raises(ConfigError, match="holds no readable checkpoint"):
        run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=1",
             f"trainer.init_from={tmp_path / 'missing'}"], tmp_path / "third")
    with pytest.raises(ConfigError, match="does not fit model=lenet5"):
        run(["model=lenet5", "dataset=digits", "optimizer=sgd", "trainer.max_steps=1",
             f"trainer.init_from={tmp_path / 'first'}"], tmp_path / "fourth")
