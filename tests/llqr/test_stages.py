"""The stage abstraction x_{i+1} = f_i(x_i, θ_i) reproduces the model's forward pass (spec §1, §5)."""
import torch
from torch import nn

from llqr.stages import Residual, build_stages, flatten_state, rollout, unflatten_state


def test_plain_sequential_one_stage_per_layer():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.Tanh())).double()
    stages = build_stages(model)
    assert [s.controlled for s in stages] == [True, False, True, False]
    assert [len(s.params) for s in stages] == [2, 0, 2, 0]
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(rollout(stages, x)[-1], model(x))


def test_residual_block_expands_into_tuple_state_stages():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model = nn.Sequential(nn.Linear(3, 4), Residual(block, nn.Linear(4, 4)), nn.ReLU(),
                          Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    # the module itself computes block(x) + shortcut(x)
    h = model[0](x)
    assert torch.allclose(model[1](h), block(h) + model[1].shortcut(h))
    stages = build_stages(model)
    names = [s.name for s in stages]
    assert names[1] == "1.fork" and names[-1] == "3.join"
    states = rollout(stages, x)
    assert isinstance(states[2], tuple) and len(states[2]) == 2  # (main, carried identity)
    assert torch.allclose(states[-1], model(x), atol=1e-14)
    # every parameter belongs to exactly one stage, in model order
    owned = [id(p) for s in stages for p in s.params]
    assert owned == [id(p) for p in model.parameters()]


def test_batchnorm_stage_uses_batch_statistics_and_leaves_running_stats():
    bn = nn.BatchNorm1d(3).double().train()
    stage = build_stages(nn.Sequential(bn))[0]
    x = torch.randn(6, 3, dtype=torch.float64) * 2 + 1
    out = stage.fn(x, tuple(stage.params))
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.equal(bn.running_mean, torch.zeros(3, dtype=torch.float64))
    assert int(bn.num_batches_tracked) == 0


def test_flatten_unflatten_nested_tuple_state():
    state = (torch.randn(2, 3), (torch.randn(4), torch.randn(1, 2)))
    vec = flatten_state(state)
    assert vec.shape == (12,)
    back = unflatten_state(vec, state)
    assert torch.equal(back[0], state[0]) and torch.equal(back[1][1], state[1][1])
