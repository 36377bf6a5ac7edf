"""torchrun with 2 processes (gloo, CPU): data parallelism for every optimizer (harness/distributed.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from harness.compose import CONFIGS, REPO_ROOT

TASK = ["model=mlp", "dataset=digits", "dataset.batch_size=64", "schedule=constant", "trainer.progress=false",
        "checkpoint.every=0", "trainer.log_every=1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(run_dir, overrides, processes):
    launcher = [sys.executable, "train.py"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, *TASK, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return summary, torch.load(checkpoint, weights_only=True)["model"]


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,atol", [("optimizer=sgd optimizer.lr=0.05", 1e-6),
                                            # Adam divides by sqrt(v): near-zero gradients amplify rounding
                                            ("optimizer=adamw optimizer.lr=0.003", 1e-5)])
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path, optimizer, atol):
    overrides = [*optimizer.split(), "trainer.max_steps=10", "trainer.ddp_sync=none"]
    single_summary, single = train(tmp_path / "one", overrides, 1)
    pair_summary, pair = train(tmp_path / "two", overrides, 2)
    assert pair_summary["world_size"] == 2 and pair_summary["ranks_agree"]
    for name in single:  # the same sums in a different order: equal up to float32 rounding
        torch.testing.assert_close(pair[name], single[name], rtol=1e-4, atol=atol)


SECOND_ORDER = ["psgd_xmat", "psgd_lra", "kfac", "shampoo", "llqr"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", SECOND_ORDER)
def test_second_order_optimizers_stay_identical_across_ranks(tmp_path, optimizer):
    if not (CONFIGS / "optimizer" / f"{optimizer}.yaml").is_file():
        pytest.fail(f"configs/optimizer/{optimizer}.yaml is missing")
    summary, _ = train(tmp_path, [f"optimizer={optimizer}", "trainer.max_steps=20"], 2)
    assert summary["ranks_agree"], "every rank holds rank 0's parameters after the last step"
    curve = losses(tmp_path)
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4, curve
