"""PPO's terms against hand computations on tiny fixed rollouts (numbers worked out in the comments)."""

import math

import numpy as np
import pytest
import torch

from harness.protocol import LossClosure
from harness.rl.ppo import ClippedSurrogate, GaussianActor, Normalizer, RunningMeanStd, compute_gae, objective_mean


def test_gae_matches_a_hand_computation():
    # Environment 0: γ = 0.9, λ = 0.8, the episode ends after step 1 (no bootstrap across it).
    #   t=2: δ = 3 + 0.9·2.0 − 1.5 = 3.3                      Â = 3.3
    #   t=1: δ = 2 − 1.0 = 1.0 (done)                           Â = 1.0
    #   t=0: δ = 1 + 0.9·1.0 − 0.5 = 1.4                        Â = 1.4 + 0.72·1.0 = 2.12
    # Environment 1: rewards 0, 0, 1, values 0, last value 1:
    #   Â2 = 1 + 0.9 = 1.9, Â1 = 0.72·1.9 = 1.368, Â0 = 0.72·1.368 = 0.98496
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]])
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    advantages, returns = compute_gae(rewards, values, dones, torch.tensor([2.0, 1.0]), gamma=0.9, lam=0.8)
    expected = torch.tensor([[2.12, 0.98496], [1.0, 1.368], [3.3, 1.9]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def zero_mean_actor(sigma):
    """An actor whose mean is 0 for every observation and whose standard deviation is `sigma`."""
    actor = GaussianActor(obs_dim=2, act_dim=1)
    with torch.no_grad():
        for p in actor.mean.parameters():
            p.zero_()
        actor.log_std.fill_(math.log(sigma))
    return actor


def hand_log_prob(a, sigma):
    return -a * a / (2 * sigma * sigma) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


# Ratios r, advantages A and min(r·A, clip(r, 0.8, 1.2)·A) for ε = 0.2:
#   r=1.5, A= 2: min(3.0, 2.4)   = 2.4  (clipped)
#   r=0.5, A=−1: min(−0.5, −0.8) = −0.8 (clipped)
#   r=1.1, A=−3: min(−3.3, −3.3) = −3.3
#   r=0.7, A= 1: min(0.7, 0.8)   = 0.7
ACTIONS, RATIOS, ADVANTAGES, SURROGATE = [0.0, 0.5, 1.0, 0.2], [1.5, 0.5, 1.1, 0.7], [2.0, -1.0, -3.0, 1.0], [2.4, -0.8, -3.3, 0.7]


def fixed_rollout(sigma=0.5):
    obs = torch.randn(4, 2)
    actions = torch.tensor(ACTIONS).unsqueeze(-1)
    old_log_probs = torch.tensor([hand_log_prob(a, sigma) - math.log(r) for a, r in zip(ACTIONS, RATIOS)])
    return obs, actions, old_log_probs, torch.tensor(ADVANTAGES)


def test_clipped_surrogate_matches_a_hand_computation():
    surrogate = ClippedSurrogate(zero_mean_actor(0.5), clip=0.2)
    per_sample = surrogate(fixed_rollout())
    torch.testing.assert_close(per_sample, -torch.tensor(SURROGATE))
    assert float(per_sample.detach().mean()) == pytest.approx(0.25, abs=1e-6)  # −(2.4 − 0.8 − 3.3 + 0.7)/4


def test_clipped_samples_give_no_gradient():
    # d(−r·A)/d log σ = −A·r·(a²/σ² − 1) for unclipped samples, 0 for clipped ones (σ = 0.5):
    #   sample 3: 3·1.1·(1/0.25 − 1) = 9.9; sample 4: −0.7·(0.04/0.25 − 1) = 0.588; mean over 4 = 2.622
    actor = zero_mean_actor(0.5)
    ClippedSurrogate(actor, clip=0.2)(fixed_rollout()).mean().backward()
    assert float(actor.log_std.grad) == pytest.approx(2.622, rel=1e-5)


def test_entropy_bonus_matches_the_gaussian_entropy():
    # H[N(μ, σ²)] = ½ log(2πe σ²) per action dimension; the loss subtracts c·H.
    sigma, coef = 0.5, 0.1
    with_bonus = ClippedSurrogate(zero_mean_actor(sigma), clip=0.2, entropy_coef=coef)(fixed_rollout(sigma))
    entropy = 0.5 * math.log(2 * math.pi * math.e * sigma * sigma)
    torch.testing.assert_close(with_bonus, -torch.tensor(SURROGATE) - coef * entropy)


def test_closure_without_backward_gives_the_graph_of_the_same_loss():
    """What PSGD needs: closure(backward=False) differentiates to closure()'s gradient, twice the same."""
    actor = zero_mean_actor(0.7)
    torch.nn.init.normal_(actor.mean[0].weight)
    surrogate = ClippedSurrogate(actor, clip=0.2)
    closure = LossClosure(surrogate, fixed_rollout(0.7), None, objective_mean)
    loss = closure(backward=False)
    graph_grads = torch.autograd.grad(loss, list(actor.parameters()), allow_unused=True)
    again = closure()
    assert float(again.detach()) == float(loss.detach())
    for g, p in zip(graph_grads, actor.parameters()):
        torch.testing.assert_close(g if g is not None else torch.zeros_like(p), p.grad if p.grad is not None else torch.zeros_like(p))


def test_running_mean_std_equals_the_statistics_of_all_data():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 30)]
    rms = RunningMeanStd((4,), epsilon=0.0)
    for batch in batches:
        rms.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-12)


def test_reward_scaling_divides_by_the_std_of_the_discounted_return():
    # VecNormalize: R_t = γR_{t−1} + r_t, r̃_t = clip(r_t / sqrt(Var[R_1..R_t] + 1e-8), ±10); R resets at episode ends.
    gamma, rewards = 0.5, [1.0, 2.0, -1.0, 4.0, 0.5]
    normalizer = Normalizer((1,), 1, gamma)
    returns, running = [], 0.0
    for t, r in enumerate(rewards):
        running = gamma * running + r
        returns.append(running)
        scaled = float(normalizer.reward([r], [0.0])[0])
        if t == 0:
            assert scaled == 10.0  # one return: variance ≈ 0 (the 1e-4 prior count), so the ratio is clipped
        else:
            assert scaled == pytest.approx(r / math.sqrt(np.var(returns) + 1e-8), rel=1e-3)
    normalizer.reward([1.0], [1.0])
    assert normalizer.returns[0] == 0.0


def test_observation_normalisation_standardises_and_clips():
    normalizer = Normalizer((2,), 1, 0.99, clip=5.0)
    data = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    for row in data[:-1]:
        normalizer.observation(row[None])
    out = normalizer.observation(data[-1:]).numpy()
    mean, var = normalizer.obs_rms.mean, normalizer.obs_rms.var
    assert out[0, 0] == pytest.approx((5.0 - mean[0]) / math.sqrt(var[0] + 1e-8), rel=1e-5)
    np.testing.assert_allclose(mean, data.mean(0), rtol=1e-4)
    assert abs(out[0, 1]) <= 5.0
