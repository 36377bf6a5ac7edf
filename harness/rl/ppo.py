"""Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347), read top to bottom.

The pieces: running normalisation of observations and rewards, the Gaussian actor and the critic (two
separate networks, as the PPO paper does on MuJoCo, §6.1, and as the PSGD paper's Fig. 1 does), the rollout
buffer, generalized advantage estimation, the clipped surrogate, the value loss, and the minibatch epochs.

Every optimizer step goes through the training-loop protocol (`harness.protocol.LossClosure`): the actor's
optimizer steps on `ClippedSurrogate` (a module whose output is the per-sample loss, loss kind "objective"),
the critic's on the critic itself with the harness's "mse" loss. So `closure(backward=False)` gives
second-order optimizers (PSGD) the graph they need for Hessian-vector products.
"""

import math

import numpy as np
import torch
import torch.nn as nn

from harness.protocol import LossClosure, loss_function


class RunningMeanStd:
    """Running mean and variance of a stream of vectors (Chan et al.'s parallel update, as OpenAI baselines'
    `RunningMeanStd` behind `VecNormalize`). float64 numpy arrays: the rollout calls it every step."""

    def __init__(self, shape=(), epsilon=1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = epsilon  # baselines' prior count: the first batch sets the statistics almost alone

    def update(self, batch):
        batch = np.asarray(batch, dtype=np.float64).reshape(-1, *self.mean.shape)
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + np.square(delta) * self.count * batch_count / total
        self.var, self.count = m2 / total, total

    def state_dict(self):
        return {"mean": torch.tensor(np.asarray(self.mean)), "var": torch.tensor(np.asarray(self.var)), "count": float(self.count)}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"].numpy().copy(), state["var"].numpy().copy(), state["count"]  # 0-d arrays for scalars


class Normalizer:
    """Observation and reward normalisation as baselines' `VecNormalize` (used by its PPO on MuJoCo):
    observations are standardised by their running statistics and clipped to ±clip; rewards are divided by
    the running standard deviation of the discounted return and clipped to ±clip (their mean is not removed).
    Takes numpy arrays, one row per environment; returns float32 tensors."""

    def __init__(self, obs_shape, num_envs, gamma, normalize_obs=True, normalize_reward=True, clip=10.0, epsilon=1e-8):
        self.obs_rms, self.ret_rms = RunningMeanStd(obs_shape), RunningMeanStd(())
        self.returns = np.zeros(num_envs)  # discounted return so far, per environment
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.normalize_obs, self.normalize_reward = normalize_obs, normalize_reward

    def observation(self, obs, update=True):
        obs = np.asarray(obs, dtype=np.float64)
        if self.normalize_obs:
            if update:
                self.obs_rms.update(obs)
            obs = np.clip((obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon), -self.clip, self.clip)
        return torch.from_numpy(obs.astype(np.float32))

    def reward(self, reward, done):
        reward = np.asarray(reward, dtype=np.float64)
        if self.normalize_reward:
            self.returns = self.returns * self.gamma + reward
            self.ret_rms.update(self.returns)
            reward = np.clip(reward / np.sqrt(self.ret_rms.var + self.epsilon), -self.clip, self.clip)
            self.returns = self.returns * (1.0 - np.asarray(done, dtype=np.float64))
        return torch.from_numpy(reward.astype(np.float32))

    def state_dict(self):
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(), "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, state):
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        self.returns = state["returns"].numpy().copy()


def mlp(sizes, output_gain):
    """tanh MLP; orthogonal init with gain √2 and zero biases, the last layer with `output_gain`
    (baselines ppo2's init; the PPO paper says only "two hidden layers of 64 units, tanh")."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=output_gain if last else math.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    """π(a|s) = N(μ(s), diag σ²): an MLP gives the mean, σ = exp(log_std) is a free parameter per action
    dimension, independent of the state (PPO paper §6.1)."""

    def __init__(self, obs_dim, act_dim, hidden=(64, 64), log_std_init=0.0):
        super().__init__()
        self.mean = mlp((obs_dim, *hidden, act_dim), output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def distribution(self, obs):
        mean = self.mean(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)

    def forward(self, obs):
        return self.mean(obs)


class Critic(nn.Module):
    """V(s): an MLP with one output, separate from the actor (PPO paper §6.1: no shared parameters)."""

    def __init__(self, obs_dim, hidden=(64, 64)):
        super().__init__()
        self.net = mlp((obs_dim, *hidden, 1), output_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


def compute_gae(rewards, values, dones, last_value, gamma, lam):
    """Generalized advantage estimation (PPO paper eqs. 11-12; Schulman et al. 2016).

    Tensors of shape (T, N): `rewards[t]` follows the action at `t`, `dones[t]` says the episode ended with
    that step (so `values[t + 1]` belongs to a new episode and must not be bootstrapped), `last_value` (N,)
    is V of the observation after the last step. Returns (advantages, returns = advantages + values)."""
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]  # δ_t = r_t + γV(s_{t+1}) − V(s_t)  (eq. 12)
        running = delta + gamma * lam * alive * running  # Â_t = δ_t + γλ Â_{t+1}  (eq. 11, truncated at episode ends)
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """One rollout of T steps from N environments: what the update needs, stored as (T, N, ...) tensors."""

    def __init__(self, steps, num_envs, obs_dim, act_dim):
        self.obs = torch.zeros(steps, num_envs, obs_dim)
        self.actions = torch.zeros(steps, num_envs, act_dim)
        self.log_probs = torch.zeros(steps, num_envs)
        self.values = torch.zeros(steps, num_envs)
        self.rewards = torch.zeros(steps, num_envs)
        self.dones = torch.zeros(steps, num_envs)
        self.advantages = self.returns = None

    def add(self, t, obs, action, log_prob, value, reward, done):
        self.obs[t], self.actions[t], self.log_probs[t] = obs, action, log_prob
        self.values[t], self.rewards[t], self.dones[t] = value, reward, done

    def finish(self, last_value, gamma, lam):
        self.advantages, self.returns = compute_gae(self.rewards, self.values, self.dones, last_value, gamma, lam)

    def flat(self, normalize_advantages=True):
        """The rollout as one batch of T·N samples; advantages standardised over the whole batch (baselines
        ppo1, the code of the PPO paper's MuJoCo runs; ppo2 standardises per minibatch)."""
        advantages = self.advantages.reshape(-1)
        if normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return {"obs": self.obs.reshape(-1, self.obs.shape[-1]), "actions": self.actions.reshape(-1, self.actions.shape[-1]),
                "log_probs": self.log_probs.reshape(-1), "advantages": advantages, "returns": self.returns.reshape(-1)}


class ClippedSurrogate(nn.Module):
    """The actor's loss as a module whose output is the per-sample loss (loss kind "objective"):

        −min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t) − c_ent · H[π(·|s_t)],   r_t = π(a_t|s_t) / π_old(a_t|s_t)

    (PPO paper eq. 7 for L^CLIP, eq. 9 for the entropy bonus; c_ent = 0 on MuJoCo, §6.1). Its parameters are
    the actor's, so an optimizer built on it updates the actor."""

    def __init__(self, actor, clip=0.2, entropy_coef=0.0):
        super().__init__()
        self.actor, self.clip, self.entropy_coef = actor, clip, entropy_coef

    def forward(self, batch):
        obs, actions, old_log_probs, advantages = batch
        distribution = self.actor.distribution(obs)
        ratio = torch.exp(distribution.log_prob(actions).sum(-1) - old_log_probs)
        surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - self.clip, 1.0 + self.clip) * advantages)
        return -surrogate - self.entropy_coef * distribution.entropy().sum(-1)


def objective_mean(output, targets):
    return output.mean()  # the harness's "objective" loss: the model's output is the per-sample loss


def ppo_update(surrogate, critic, actor_optimizer, critic_optimizer, batch, epochs, minibatch_size, grad_clip=None):
    """K epochs over the rollout in shuffled minibatches (PPO paper Algorithm 1). Each minibatch makes one
    actor step on L^CLIP and one critic step on the value loss ½(V(s) − R̂)² (the harness's "mse"; the PPO
    paper's L^VF = (V − V^targ)² up to the factor ½, which Adam-type steps do not see). Returns statistics."""
    size = batch["obs"].shape[0]
    value_loss_fn = loss_function("mse")
    stats = {"actor_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    count = 0
    for _ in range(epochs):
        order = torch.randperm(size)
        for start in range(0, size, minibatch_size):
            index = order[start : start + minibatch_size]
            inputs = (batch["obs"][index], batch["actions"][index], batch["log_probs"][index], batch["advantages"][index])
            actor_closure = LossClosure(surrogate, inputs, None, objective_mean, grad_clip=grad_clip)
            actor_optimizer.step(actor_closure)
            critic_closure = LossClosure(critic, batch["obs"][index], batch["returns"][index], value_loss_fn, grad_clip=grad_clip)
            critic_optimizer.step(critic_closure)
            stats["actor_loss"] += float(actor_closure.data_loss)
            stats["value_loss"] += float(critic_closure.data_loss)
            with torch.no_grad():  # diagnostics on the minibatch after the step
                log_ratio = surrogate.actor.distribution(inputs[0]).log_prob(inputs[1]).sum(-1) - inputs[2]
                stats["approx_kl"] += float(((log_ratio.exp() - 1) - log_ratio).mean())
                stats["clip_fraction"] += float(((log_ratio.exp() - 1).abs() > surrogate.clip).float().mean())
            count += 1
    return {key: value / max(count, 1) for key, value in stats.items()}
