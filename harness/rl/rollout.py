"""Collecting rollouts: the actor acts in the environments, the normaliser rescales what comes back, and
finished episodes are recorded with their raw (unnormalised) return."""

import numpy as np
import torch

from harness.rl.envs import restore, snapshot
from harness.rl.ppo import Normalizer


class Collector:
    """Steps `envs` in turn with the actor's sampled actions; keeps the normaliser, the current observations
    and the running episode returns, all of which a checkpoint saves (`state_dict`)."""

    def __init__(self, envs, first_obs, gamma, lam, device, normalize_obs=True, normalize_reward=True, clip=10.0, bootstrap_truncated=False):
        self.envs, self.gamma, self.lam, self.device = envs, gamma, lam, device
        self.bootstrap_truncated = bootstrap_truncated
        space = envs[0].action_space
        self.low, self.high = torch.as_tensor(space.low), torch.as_tensor(space.high)
        self.normalizer = Normalizer(first_obs.shape[1:], len(envs), gamma, normalize_obs, normalize_reward, clip)
        self.obs = self.normalizer.observation(first_obs)  # the current (normalised) observation of each environment
        self.episode_return = np.zeros(len(envs))
        self.episode_length = np.zeros(len(envs), dtype=np.int64)
        self.timesteps = 0

    @torch.no_grad()
    def collect(self, buffer, actor, critic):
        """Fill `buffer` with one rollout; returns the episodes that ended in it as (timestep, return, length)."""
        episodes = []
        for t in range(buffer.rewards.shape[0]):
            obs = self.obs.to(self.device)
            distribution = actor.distribution(obs)
            action = distribution.sample()
            log_prob, value = distribution.log_prob(action).sum(-1), critic(obs)
            # The environment gets the action clipped to its bounds; the buffer keeps the sampled one (baselines).
            env_action = torch.maximum(torch.minimum(action.cpu(), self.high), self.low).numpy()
            rewards, dones, next_obs, truncated_finals = self._step(env_action, episodes)
            scaled = self.normalizer.reward(rewards, dones)
            for i, final_obs in truncated_finals:  # optional: bootstrap episodes cut by the time limit (not in PPO's code)
                scaled[i] += self.gamma * float(critic(self.normalizer.observation(final_obs[None], update=False).to(self.device))[0])
            buffer.add(t, obs, action, log_prob, value, scaled.to(self.device), torch.as_tensor(dones, dtype=torch.float32, device=self.device))
            self.obs = self.normalizer.observation(next_obs)
        buffer.finish(critic(self.obs.to(self.device)), self.gamma, self.lam)
        return episodes

    def _step(self, env_action, episodes):
        rewards, dones, next_obs, truncated_finals = np.zeros(len(self.envs)), np.zeros(len(self.envs)), [], []
        for i, env in enumerate(self.envs):
            obs, reward, terminated, truncated, _ = env.step(env_action[i])
            self.timesteps += 1
            self.episode_return[i] += reward
            self.episode_length[i] += 1
            rewards[i], dones[i] = reward, float(terminated or truncated)
            if terminated or truncated:
                episodes.append((self.timesteps, float(self.episode_return[i]), int(self.episode_length[i])))
                self.episode_return[i], self.episode_length[i] = 0.0, 0
                if truncated and not terminated and self.bootstrap_truncated:
                    truncated_finals.append((i, obs))
                obs, _ = env.reset()
            next_obs.append(obs)
        return rewards, dones, np.stack(next_obs), truncated_finals

    def state_dict(self):
        return {"envs": [snapshot(env) for env in self.envs], "normalizer": self.normalizer.state_dict(), "obs": self.obs.clone(),
                "episode_return": torch.from_numpy(self.episode_return.copy()),
                "episode_length": torch.from_numpy(self.episode_length.copy()), "timesteps": self.timesteps}

    def load_state_dict(self, state):
        for env, env_state in zip(self.envs, state["envs"]):
            restore(env, env_state)
        self.normalizer.load_state_dict(state["normalizer"])
        self.obs = state["obs"].clone()
        self.episode_return = state["episode_return"].numpy().copy()
        self.episode_length = state["episode_length"].numpy().copy()
        self.timesteps = state["timesteps"]
