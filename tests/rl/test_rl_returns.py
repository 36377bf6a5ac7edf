"""scripts/rl_returns.py: moving averages, grouping over seeds, the table and the figure."""

import json

import numpy as np
import pytest

from scripts import rl_returns


def fake_run(path, optimizer, seed, returns, task="ppo"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"seed: {seed}\nchoices: {{optimizer: {optimizer}}}\noptimizer: {{_target_: x.{optimizer}}}\n"
        f"task: {{name: {task}, env_id: Toy-v0, critic_optimizer: null}}\n")
    lines = [{"step": 100 * (i + 1), "episode/return": r} for i, r in enumerate(returns)]
    lines.insert(1, {"step": 150, "train/value_loss": 1.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_curves_table_and_figure(tmp_path):
    fake_run(tmp_path / "a0", "adamw", 0, [1.0, 3.0, 5.0, 7.0])
    fake_run(tmp_path / "a1", "adamw", 1, [3.0, 5.0, 7.0, 9.0])
    fake_run(tmp_path / "p0", "psgd_xmat", 0, [0.0, 0.0, 0.0, 10.0])
    fake_run(tmp_path / "sup", "sgd", 0, [1.0], task="supervised")
    curves = rl_returns.collect([tmp_path], window=2)
    assert set(curves["Toy-v0"]) == {"adamw", "psgd_xmat"}
    steps, smoothed = curves["Toy-v0"]["adamw"][0]
    np.testing.assert_array_equal(steps, [100, 200, 300, 400])
    np.testing.assert_allclose(smoothed, [1.0, 2.0, 4.0, 6.0])  # means over the last 2 episodes
    table = rl_returns.summary_table(curves)
    assert "7.0 ± 1.4" in table  # adamw: final smoothed returns 6 and 8, sample std √2
    rl_returns.main([str(tmp_path), "--out", str(tmp_path / "fig.png"), "--window", "2"])
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no PPO runs"):
        rl_returns.main([str(tmp_path)])
