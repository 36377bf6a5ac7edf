"""Gymnasium environments for PPO: creation, and a snapshot of their exact state for checkpoints.

A checkpoint is taken between rollouts, usually in the middle of an episode, so resuming exactly needs each
environment's physical state, its random generator and its time-limit counter. `snapshot` returns these as
tensors and plain Python values (what `torch.load(weights_only=True)` accepts); `restore` puts them back.
"""

import gymnasium
import numpy as np
import torch

from harness.errors import ConfigError


def make_envs(env_id, num_envs, seed):
    """`num_envs` copies of `env_id`, reset with seeds seed, seed + 1, ...; returns (envs, first observations)."""
    try:
        envs = [gymnasium.make(env_id) for _ in range(num_envs)]
    except gymnasium.error.Error as error:
        raise ConfigError(f"task.env_id={env_id!r}: {error}") from error
    for env in envs:
        if not isinstance(env.action_space, gymnasium.spaces.Box):
            raise ConfigError(f"task.env_id={env_id!r} has a {type(env.action_space).__name__} action space; PPO here needs a Box (continuous actions)")
    observations = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    return envs, observations


def _time_limit(env):
    while env is not None:
        if isinstance(env, gymnasium.wrappers.TimeLimit):
            return env
        env = getattr(env, "env", None)
    return None


def snapshot(env):
    """Everything `restore` needs to continue `env` exactly where it is."""
    base, limit = env.unwrapped, _time_limit(env)
    state = {"np_random": base.np_random.bit_generator.state, "elapsed_steps": limit._elapsed_steps if limit else None}
    if hasattr(base, "model") and hasattr(base, "data"):  # MuJoCo: the full integration state (qpos, qvel, warm start, ...)
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        values = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, values, spec)
        state["mujoco"] = torch.from_numpy(values)
    elif hasattr(base, "state"):  # classic control (Pendulum, ...): a state vector and, for Pendulum, the last torque
        state["state"] = torch.as_tensor(np.array(base.state, dtype=np.float64))
        state["last_u"] = None if getattr(base, "last_u", None) is None else float(np.asarray(base.last_u).reshape(-1)[0])
    else:
        raise ConfigError(f"{env.spec.id}: no way to checkpoint this environment's state; set checkpoint.every=0")
    return state


def restore(env, state):
    base, limit = env.unwrapped, _time_limit(env)
    base.np_random.bit_generator.state = state["np_random"]
    if limit is not None:
        limit._elapsed_steps = state["elapsed_steps"]
    if "mujoco" in state:
        import mujoco

        # The integration state is all that mj_step reads (MuJoCo docs, "State"), so no mj_forward here.
        mujoco.mj_setState(base.model, base.data, state["mujoco"].numpy(), mujoco.mjtState.mjSTATE_INTEGRATION)
    else:
        base.state = state["state"].numpy().copy()
        if "last_u" in state:
            base.last_u = state["last_u"]
