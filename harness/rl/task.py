"""The "ppo" task of `train.py`: PPO on a gymnasium environment, with the harness's configs, optimizers,
schedules, logging, checkpoints and exact resume.

    python train.py task=ppo task.env_id=Pendulum-v1 task.total_timesteps=20000 optimizer=adamw
    python train.py experiment=fig1_ppo_halfcheetah optimizer=psgd_xmat seed=1

The actor's optimizer is the `optimizer` config group; the critic's is `task.critic_optimizer` (null: a
second instance of the same config). Both are built by `harness.protocol.build_optimizer`, so any optimizer
config works, first or second order. The schedule (`schedule` group) advances once per rollout. PPO runs in one
process: under torchrun (WORLD_SIZE > 1) it stops with an error; run one process per seed instead.
"""

import json
import math
import os
import time
from collections import deque
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.checkpoint import CheckpointManager, rng_state, set_rng_state
from harness.errors import ConfigError, NonFiniteLossError, UnsupportedLossError
from harness.loggers import Loggers
from harness.loop import configure_determinism, resolve_device
from harness.preemption import PreemptionGuard
from harness.protocol import build_optimizer
from harness.rl.envs import make_envs
from harness.rl.ppo import ClippedSurrogate, Critic, GaussianActor, RolloutBuffer, ppo_update
from harness.rl.rollout import Collector
from harness.run_info import environment, peak_memory_mb
from harness.schedules import Schedule
from harness.tasks import register_task

RETURN_WINDOW = 10  # the smoothed return is the mean over the last 10 episodes


class Agent:
    """Everything PPO trains with, built from the config."""

    def __init__(self, cfg, device):
        task = cfg.task
        self.validate(task)
        self.envs, first_obs = make_envs(task.env_id, task.num_envs, cfg.seed * 1000)
        obs_dim, act_dim = first_obs.shape[1], self.envs[0].action_space.shape[0]
        self.actor = GaussianActor(obs_dim, act_dim, tuple(task.hidden), task.log_std_init).to(device)
        self.critic = Critic(obs_dim, tuple(task.hidden)).to(device)
        self.surrogate = ClippedSurrogate(self.actor, task.clip, task.entropy_coef)
        self.collector = Collector(self.envs, first_obs, task.gamma, task.gae_lambda, device, task.normalize_obs,
                                   task.normalize_reward, task.clip_normalized, task.bootstrap_truncated)
        self.buffer = RolloutBuffer(task.rollout_steps, task.num_envs, obs_dim, act_dim)
        self.buffer_device(device)
        critic_choice = task.critic_optimizer if task.critic_optimizer is not None else cfg.optimizer
        self.actor_cfg = actor_cfg = with_overrides(cfg.optimizer, task.optimizer_overrides, "actor")
        self.critic_cfg = critic_cfg = with_overrides(critic_choice, task.optimizer_overrides, "critic")
        # The actor's model is the surrogate module (its output is the per-sample loss: loss kind "objective");
        # the critic regresses the returns (loss kind "mse"), so Gauss-Newton methods see its output curvature.
        try:
            self.actor_optimizer = build_optimizer(actor_cfg, self.surrogate, "objective", self.sample_batch(actor=True))
        except UnsupportedLossError as error:
            raise ConfigError(f"{error} -- the PPO actor's clipped surrogate is a plain objective with no output "
                              "curvature, which this optimizer needs; use it for the critic only, e.g. optimizer=adamw "
                              "+optimizer@task.critic_optimizer=llqr") from error
        self.critic_optimizer = build_optimizer(critic_cfg, self.critic, "mse", self.sample_batch(actor=False))
        self.steps_per_rollout = task.rollout_steps * task.num_envs
        self.total_rollouts = math.ceil(task.total_timesteps / self.steps_per_rollout)
        self.schedule = Schedule(cfg.schedule, self.total_rollouts, None)
        for optimizer in (self.actor_optimizer, self.critic_optimizer):
            self.schedule.attach(optimizer)
        self.batch = None

    @staticmethod
    def validate(task):
        for key in ("total_timesteps", "num_envs", "rollout_steps", "epochs", "minibatch_size"):
            if int(task[key]) < 1:
                raise ConfigError(f"task.{key}={task[key]} is invalid: it must be >= 1")
        if not 0.0 <= task.gamma <= 1.0 or not 0.0 <= task.gae_lambda <= 1.0:
            raise ConfigError(f"task.gamma={task.gamma} and task.gae_lambda={task.gae_lambda} must lie in [0, 1]")

    def buffer_device(self, device):
        for name in ("obs", "actions", "log_probs", "values", "rewards", "dones"):
            setattr(self.buffer, name, getattr(self.buffer, name).to(device))

    def sample_batch(self, actor):
        """`sample_batch(n)` of the protocol: n random samples of the latest rollout, as the closures' batches."""

        def sample(batch_size):
            if self.batch is None:
                raise RuntimeError("sample_batch was called before the first rollout")
            index = torch.randint(self.batch["obs"].shape[0], (batch_size,))
            if actor:
                inputs = tuple(self.batch[k][index] for k in ("obs", "actions", "log_probs", "advantages"))
                return inputs, None
            return self.batch["obs"][index], self.batch["returns"][index]

        return sample

    def state_dict(self):
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(), "critic_optimizer": self.critic_optimizer.state_dict(),
                "collector": self.collector.state_dict()}

    def load_state_dict(self, state):
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.collector.load_state_dict(state["collector"])

    def close(self):
        for env in self.envs:
            env.close()


def with_overrides(optimizer_cfg, overrides, who):
    """A copy of an optimizer config with `task.optimizer_overrides` applied to the keys it has (null: skipped),
    so PPO's Adam step size applies to every optimizer of a comparison without adding keys that another
    optimizer's constructor does not take. Says so when it replaces a value (`optimizer.lr=...` loses)."""
    optimizer_cfg = OmegaConf.create(OmegaConf.to_container(optimizer_cfg, resolve=True))
    for key, value in (overrides or {}).items():
        if value is not None and key in optimizer_cfg:
            if optimizer_cfg[key] != value:
                print(f"{who} optimizer: {key}={value} from task.optimizer_overrides (its config says {optimizer_cfg[key]}; "
                      f"task.optimizer_overrides.{key}=null keeps it)")
            optimizer_cfg[key] = value
    return optimizer_cfg


def resume(cfg, agent, checkpoints):
    """Load the newest readable checkpoint; returns (rollout, recent returns, best) to continue from."""
    if not cfg.checkpoint.resume:
        return 0, deque(maxlen=RETURN_WINDOW), {}
    payload, path = checkpoints.load_latest()
    if payload is None:
        return 0, deque(maxlen=RETURN_WINDOW), {}
    agent.load_state_dict(payload["agent"])
    set_rng_state(payload["rng"])
    print(f"resumed from {path} at {payload['step']} environment steps")
    return payload["rollout"], deque(payload["recent_returns"], maxlen=RETURN_WINDOW), payload["best"]


def refuse_data_parallel():
    """PPO here runs in one process. Under torchrun every rank would collect its own rollouts and update its own
    actor and critic, so the ranks would train different policies: refuse instead (one process per seed)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ConfigError(
            f"task.name=ppo does not run data-parallel: this is one of WORLD_SIZE={world_size} processes (torchrun), "
            "which would each collect their own rollouts and train different policies. Run one process per seed "
            "instead: python train.py experiment=... seed=N (or a sweep over seeds, e.g. make sweep SWEEP=psgd_fig1_ppo).")


@register_task("ppo")
def run_ppo(cfg, run_dir):
    """Train PPO as `cfg` says, writing everything into `run_dir`. Returns the summary dict."""
    refuse_data_parallel()
    run_dir, task = Path(run_dir), cfg.task
    torch.manual_seed(cfg.seed)
    configure_determinism(cfg.trainer)
    device = resolve_device(cfg.trainer.device)
    agent = Agent(cfg, device)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    checkpoints = CheckpointManager(run_dir, cfg.checkpoint.keep)
    rollout, recent, best = resume(cfg, agent, checkpoints)
    start_rollout = rollout
    loggers = Loggers(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), run_dir.name,
                      resume_step=agent.collector.timesteps if rollout else None)

    def save_checkpoint():
        return checkpoints.save(agent.collector.timesteps, {"agent": agent.state_dict(), "rng": rng_state(), "rollout": rollout,
                                                            "recent_returns": list(recent), "best": best})

    print(f"PPO on {task.env_id} with {cfg.optimizer._target_}: {agent.total_rollouts} rollouts of {agent.steps_per_rollout} steps on {device}")
    train_time, stats = 0.0, {}
    with PreemptionGuard() as preemption:
        while rollout < agent.total_rollouts:
            started = time.perf_counter()
            stats = train_rollout(agent, rollout, task, recent)
            train_time += time.perf_counter() - started
            rollout += 1
            check_finite(stats, checkpoints)
            for record in stats.pop("episodes"):
                loggers.log(record)
            loggers.log(stats)
            if "train/episode_return_smoothed" in stats:
                update_best(best, stats["train/episode_return_smoothed"], stats["step"])
            previous = agent.collector.timesteps - agent.steps_per_rollout
            if preemption.received is not None:
                save_checkpoint()
                loggers.close()
                preemption.hand_over()
            if cfg.checkpoint.every and agent.collector.timesteps // cfg.checkpoint.every > previous // cfg.checkpoint.every \
                    and rollout < agent.total_rollouts:
                save_checkpoint()
    if cfg.checkpoint.at_end:
        save_checkpoint()
    summary = make_summary(cfg, agent, rollout, stats, recent, best, train_time / max((rollout - start_rollout) * agent.steps_per_rollout, 1), device)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    loggers.close(summary)
    agent.close()
    return summary


def train_rollout(agent, rollout, task, recent):
    """Collect one rollout, then run PPO's minibatch epochs on it; returns the metrics to log."""
    agent.schedule.apply(agent.actor_optimizer, rollout)
    agent.schedule.apply(agent.critic_optimizer, rollout)
    episodes = agent.collector.collect(agent.buffer, agent.actor, agent.critic)
    agent.batch = agent.buffer.flat(task.normalize_advantages)
    update = ppo_update(agent.surrogate, agent.critic, agent.actor_optimizer, agent.critic_optimizer, agent.batch,
                        task.epochs, task.minibatch_size, task.max_grad_norm)
    for _, episode_return, _ in episodes:
        recent.append(episode_return)
    stats = {"step": agent.collector.timesteps, **{f"train/{k}": v for k, v in update.items()},
             "lr": agent.actor_optimizer.param_groups[0]["lr"], "train/episodes": len(episodes),
             "episodes": [{"step": t, "episode/return": r, "episode/length": n} for t, r, n in episodes]}
    if episodes:
        stats["train/episode_return"] = sum(r for _, r, _ in episodes) / len(episodes)
    if recent:
        stats["train/episode_return_smoothed"] = sum(recent) / len(recent)
    return stats


def check_finite(stats, checkpoints):
    if not all(math.isfinite(stats[key]) for key in ("train/actor_loss", "train/value_loss")):
        newest = checkpoints.paths()
        raise NonFiniteLossError(
            f"a PPO loss is not finite at {stats['step']} environment steps (actor {stats['train/actor_loss']}, critic "
            f"{stats['train/value_loss']}); training stopped. Last good checkpoint: {newest[0] if newest else 'none written yet'}. "
            "Lower the learning rate or set task.max_grad_norm.")


def update_best(best, value, step):
    previous = best.get("train/episode_return_smoothed")
    if previous is None or value > previous["value"]:
        best["train/episode_return_smoothed"] = {"value": value, "step": step}


def make_summary(cfg, agent, rollout, stats, recent, best, seconds_per_step, device):
    """The same fields as the supervised loop's summary; "steps" count environment steps."""
    task = cfg.task
    final = {key: value for key, value in stats.items() if key.startswith("train/")}
    if recent:
        final["train/episode_return_smoothed"] = sum(recent) / len(recent)
    return {
        "model": f"ppo_mlp{'x'.join(str(h) for h in task.hidden)}", "dataset": task.env_id, "optimizer": cfg.optimizer._target_,
        "critic_optimizer": agent.critic_cfg._target_, "task": "ppo", "choices": dict(cfg.get("choices") or {}),
        "optimizer_configs": {"actor": OmegaConf.to_container(agent.actor_cfg), "critic": OmegaConf.to_container(agent.critic_cfg)},
        "experiment": cfg.get("experiment_name"), "seed": cfg.seed, "steps": agent.collector.timesteps,
        "total_steps": agent.total_rollouts * agent.steps_per_rollout, "rollouts": rollout, "stopped": "max_steps",
        "final": final, "best": best, "ms_per_step": 1000.0 * seconds_per_step, "peak_memory_mb": peak_memory_mb(device),
        **environment(device),
    }
