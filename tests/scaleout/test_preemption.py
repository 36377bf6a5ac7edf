"""A run sent SIGTERM (what SLURM sends before preemption) checkpoints; resuming it ends exactly where an
uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time

import torch

from harness.compose import REPO_ROOT

TASK = ["model=lenet5", "dataset=digits", "optimizer=adamw", "schedule=cosine", "trainer.max_steps=300",
        "checkpoint.every=0", "trainer.progress=false"]


def start(run_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *TASK, "trainer.log_every=1", f"hydra.run.dir={run_dir}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_parameters(run_dir):
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(newest, weights_only=True)


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path):
    straight = start(tmp_path / "straight")
    preempted = start(tmp_path / "preempted")
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    deadline = time.time() + 240
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 50) and time.time() < deadline:
        time.sleep(0.05)
    assert preempted.poll() is None, "the run finished before the signal; make it longer"
    preempted.send_signal(signal.SIGTERM)
    assert preempted.wait(timeout=120) == -signal.SIGTERM, preempted.stderr.read()
    saved = sorted((tmp_path / "preempted" / "checkpoints").glob("step_*.pt"))
    assert len(saved) == 1 and 50 <= int(saved[0].stem.split("_")[1]) < 300, "a checkpoint at the step it stopped"
    resumed = start(tmp_path / "preempted")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    a, b = final_parameters(tmp_path / "straight"), final_parameters(tmp_path / "preempted")
    assert a["step"] == b["step"] == 300
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])
