"""PPO as a task of train.py: it learns, its environment snapshots are exact, and a resumed run continues
exactly as an uninterrupted one."""

import json

import gymnasium
import numpy as np
import pytest
import torch

from harness.rl.envs import make_envs, restore, snapshot
from tests.harness.helpers import run

QUICK = ["task=ppo", "schedule=constant", "optimizer=adamw", "trainer.device=cpu"]


def episode_returns(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["episode/return"] for line in lines if "episode/return" in line]


def test_a_short_run_improves_the_return(tmp_path):
    # InvertedPendulum-v5 (reward 1 per step upright): a random policy keeps it up ~6 steps; PPO with the
    # paper's settings (horizon shortened to 1024) keeps it up for ~80 steps after 6 rollouts (seed 0).
    _, summary = run([*QUICK, "task.env_id=InvertedPendulum-v5", "task.total_timesteps=6144", "task.rollout_steps=1024",
                      "optimizer.lr=3e-4"], tmp_path)
    returns = episode_returns(tmp_path)
    first, last = np.mean(returns[:10]), np.mean(returns[-10:])
    assert last > 3 * first and last > 30, (first, last)
    assert summary["final"]["train/episode_return_smoothed"] == pytest.approx(last)
    assert summary["steps"] == 6144 and summary["dataset"] == "InvertedPendulum-v5"


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "HalfCheetah-v5"])
def test_snapshot_restores_the_environment_exactly(env_id):
    (env,), _ = make_envs(env_id, 1, seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, *env.action_space.shape)).astype(np.float32)
    for a in actions[:15]:
        env.step(a)
    state = snapshot(env)

    def trajectory():
        out = []
        for a in actions[15:]:
            obs, reward, *_ = env.step(a)
            out.append(np.append(obs, reward))
        out.append(env.reset()[0])  # the generator is restored too: the next reset draws the same state
        return np.concatenate(out)

    first = trajectory()
    (fresh,), _ = make_envs(env_id, 1, seed=99)
    restore(fresh, state)
    env = fresh
    np.testing.assert_array_equal(trajectory(), first)


def assert_same(a, b, where="checkpoint"):
    """Recursively equal: tensors bit for bit, containers entry by entry, other values with ==."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("env_id, optimizer", [("Pendulum-v1", "adamw"), ("HalfCheetah-v5", "adamw"), ("Pendulum-v1", "psgd_xmat")])
def test_resumed_run_equals_uninterrupted_run(tmp_path, env_id, optimizer):
    """3 rollouts straight vs 2 rollouts, stop, resume for the third: the same checkpoint (parameters, optimizer
    states, environments, normalisers, RNG) and the same metrics."""
    if optimizer.startswith("psgd"):
        pytest.importorskip("psgd")
    task = [*QUICK, f"optimizer={optimizer}", f"task.env_id={env_id}", "task.rollout_steps=256", "task.epochs=2", "checkpoint.every=256"]
    run([*task, "task.total_timesteps=768"], tmp_path / "straight")
    run([*task, "task.total_timesteps=512"], tmp_path / "resumed")
    run([*task, "task.total_timesteps=768"], tmp_path / "resumed")
    straight, resumed = (torch.load(tmp_path / d / "checkpoints" / "step_00000768.pt", weights_only=True) for d in ("straight", "resumed"))
    assert_same(straight, resumed)
    assert (tmp_path / "straight" / "metrics.jsonl").read_text() == (tmp_path / "resumed" / "metrics.jsonl").read_text()


def test_critic_can_have_its_own_optimizer(tmp_path):
    _, summary = run([*QUICK, "task.env_id=Pendulum-v1", "task.total_timesteps=128", "task.rollout_steps=128", "task.epochs=1",
                      "+optimizer@task.critic_optimizer=sgd", "task.critic_optimizer.lr=0.01"], tmp_path)
    assert summary["optimizer"] == "torch.optim.AdamW" and summary["critic_optimizer"] == "torch.optim.SGD"


def test_unknown_environment_is_a_config_error(tmp_path):
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="task.env_id='NoSuchEnv-v0'"):
        run([*QUICK, "task.env_id=NoSuchEnv-v0"], tmp_path)


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
    from harness.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="not finite at 128 environment steps"):
        run([*QUICK, "task.env_id=Pendulum-v1", "task.total_timesteps=256", "task.rollout_steps=128", "task.epochs=1",
             "optimizer=sgd", "task.optimizer_overrides.lr=1e30"], tmp_path)


def test_torchrun_is_refused_with_the_fix(tmp_path, monkeypatch):
    """Under torchrun each rank would train its own policy on its own rollouts: PPO refuses and says what to do."""
    from harness.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"task.name=ppo does not run data-parallel: .*WORLD_SIZE=2.*one process per seed"):
        run([*QUICK, "task.env_id=Pendulum-v1", "task.total_timesteps=128", "task.rollout_steps=128"], tmp_path)
    assert not (tmp_path / "summary.json").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")   # torchrun --nproc_per_node=1 is one process: it runs
    _, summary = run([*QUICK, "task.env_id=Pendulum-v1", "task.total_timesteps=128", "task.rollout_steps=128",
                      "task.epochs=1"], tmp_path)
    assert summary["steps"] == 128


def test_a_run_without_a_preset_is_named_after_its_environment(tmp_path):
    """Not after the unused model and dataset groups' defaults (resnet18-cifar10-...)."""
    from tests.harness.helpers import compose_config
    from harness.compose import composed_run_config

    assert composed_run_config([*QUICK, "task.env_id=Pendulum-v1"]).experiment_name == "ppo-Pendulum-v1-adamw"
    assert composed_run_config(["task=ppo", "optimizer=psgd_xmat"]).experiment_name == \
        f"ppo-{compose_config(['task=ppo']).task.env_id}-psgd_xmat"
    assert composed_run_config(["experiment=fig1_ppo_walker2d"]).experiment_name == "fig1_ppo_walker2d"
    assert composed_run_config(["model=lenet5", "dataset=digits", "optimizer=adamw"]).experiment_name == "lenet5-digits-adamw"
    _, summary = run([*QUICK, "optimizer=sgd", "task.env_id=Pendulum-v1", "task.total_timesteps=64", "task.rollout_steps=64",
                      "task.epochs=1"], tmp_path)
    assert summary["experiment"] == "ppo-Pendulum-v1-sgd" and summary["choices"]["optimizer"] == "sgd"


def test_llqr_actor_is_refused_with_the_critic_only_fix(tmp_path):
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match=r"use it for the critic only, e\.g\. optimizer=adamw "
                                          r"\+optimizer@task\.critic_optimizer=llqr"):
        run([*QUICK[:2], "optimizer=llqr", "trainer.device=cpu", "task.env_id=Pendulum-v1", "task.total_timesteps=64",
             "task.rollout_steps=32"], tmp_path)


def test_llqr_critic_with_an_adamw_actor_trains(tmp_path):
    _, summary = run([*QUICK, "+optimizer@task.critic_optimizer=llqr", "task.env_id=Pendulum-v1",
                      "task.total_timesteps=128", "task.rollout_steps=64"], tmp_path)
    assert summary["critic_optimizer"] == "llqr.LLQR" and summary["steps"] == 128
