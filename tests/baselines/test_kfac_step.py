"""K-FAC's step against dense linear algebra and torch.optim.SGD; resuming; argument validation; training."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines import KFAC
from tests.baselines.helpers import (LinearCellRNN, SmallCNN, assert_resumes_exactly, delayed_xor_batch,
                                    protocol_closure, training_losses)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _single_example_problem():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x, y = torch.randn(1, 4), torch.tensor([2])
    grad = torch.autograd.grad(F.cross_entropy(layer(x), y), [layer.weight, layer.bias])
    v = torch.cat([grad[0], grad[1][:, None]], dim=1)  # V = [∇W | ∇b] = g āᵀ
    return layer, x, y, v


def _kfac_step(layer, x, y, **kwargs):
    theta = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach().clone()
    opt = KFAC(layer.parameters(), model=layer, lr=1.0, momentum=0.0, factor_decay=0.0, kl_clip=None,
               verbose=False, **kwargs)
    opt.step(protocol_closure(layer, x, y))
    return torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach() - theta


def test_batch_of_one_step_is_the_exact_damped_natural_gradient(float64):
    layer, x, y, v = _single_example_problem()
    damping = 0.1
    step = _kfac_step(layer, x, y, damping=damping)
    # With one example the (empirical) Fisher is vec(V) vec(V)ᵀ, which A ⊗ G equals exactly.
    fisher = torch.outer(v.reshape(-1), v.reshape(-1))
    expected = -torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0]), v.reshape(-1))
    torch.testing.assert_close(step.reshape(-1), expected, rtol=1e-9, atol=1e-12)


def test_pi_damping_step_equals_the_dense_factored_tikhonov_inverse(float64):
    torch.manual_seed(1)
    layer = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    damping = 0.05
    step = _kfac_step(layer, x, y, damping=damping, pi_damping=True)
    rows = torch.cat([x, torch.ones(5, 1)], dim=1)
    a = rows.T @ rows / 5
    theta = torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach() - step  # the parameters before
    g_rows = torch.softmax(rows @ theta.T, 1) - F.one_hot(y, 2)  # per-example ∂ℓ_n/∂s of cross-entropy
    g = g_rows.T @ g_rows / 5
    v = g_rows.T @ rows / 5  # the batch-mean gradient [∇W | ∇b]
    pi = ((a.trace() / 4) / (g.trace() / 2)).sqrt()
    a_d, g_d = a + pi * damping**0.5 * torch.eye(4), g + damping**0.5 / pi * torch.eye(2)
    # (A_d ⊗ G_d)⁻¹ vec(V) with vec stacking columns: the Kronecker product formed densely.
    dense = torch.kron(a_d, g_d)
    expected = -torch.linalg.solve(dense, v.T.reshape(-1)).reshape(4, 2).T
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)


def test_huge_damping_gives_the_sgd_momentum_direction():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    damping = 1e7
    kfac = KFAC(model.parameters(), model=model, lr=0.1 * damping, damping=damping, kl_clip=None, verbose=False)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        kfac.step(protocol_closure(model, x, y))
        sgd.step(protocol_closure(reference, x, y))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_kl_clip_scales_the_step_so_the_quadratic_kl_equals_kappa():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    start = copy.deepcopy(model)
    protocol_closure(start, x, y)()
    v = [p.grad for p in start.parameters()]  # V, the gradient at the common starting point
    lr, kappa = 1.0, 1e-4
    steps = []
    for clip in (None, kappa):
        net = copy.deepcopy(start)
        KFAC(net.parameters(), model=net, lr=lr, momentum=0.0, damping=1e-2, kl_clip=clip, verbose=False).step(
            protocol_closure(net, x, y)
        )
        steps.append([q.detach() - p.detach() for p, q in zip(net.parameters(), start.parameters())])
    # Unclipped step Δ₀ = ηV'; ν = min(1, sqrt(κ / (η²⟨V', V⟩))) (kfac-pytorch; Ba et al. 2017).
    vg = sum((d / lr * g).sum() for d, g in zip(steps[0], v)) * lr**2
    nu = min(1.0, (kappa / vg).sqrt().item())
    assert nu < 1.0
    for d0, d1 in zip(steps[0], steps[1]):
        torch.testing.assert_close(d1, nu * d0)
    assert abs(nu**2 * vg.item() - kappa) < 1e-4 * kappa  # the quadratic KL η²ν²⟨V', V⟩ of the step is κ


def test_state_dict_resumes_exactly():
    kwargs = dict(lr=0.05, factor_update_freq=2, inv_update_freq=3, weight_decay=1e-3, verbose=False)
    assert_resumes_exactly(lambda model: KFAC(model.parameters(), model=model, **kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "Invalid learning rate: -1.0. Must be >= 0.0."),
        (dict(momentum=-0.1), "Invalid momentum: -0.1. Must be >= 0.0."),
        (dict(damping=0.0), "Invalid damping: 0.0. Must be > 0.0."),
        (dict(factor_decay=1.0), "Invalid factor_decay: 1.0. Must be in [0.0, 1.0)."),
        (dict(inv_update_freq=0), "Invalid inv_update_freq: 0. Must be an integer >= 1."),
        (dict(kl_clip=0.0), "Invalid kl_clip: 0.0. Must be > 0.0 or None."),
        (dict(weight_decay=-1e-4), "Invalid weight_decay: -0.0001. Must be >= 0.0."),
        (dict(model="net"), "Invalid model: str. Must be a torch.nn.Module."),
        (dict(fisher="true"), "Invalid fisher: 'true'. Must be 'empirical' or 'mc'."),
        (dict(fisher="mc", loss="objective"),
         "Invalid loss for fisher='mc': 'objective'. Must be one of cross_entropy, mse, binary_cross_entropy."),
    ],
)
def test_argument_validation_messages(kwargs, message):
    model = nn.Linear(2, 2)
    kwargs = {"model": model, **kwargs}
    with pytest.raises(ValueError) as error:
        KFAC(model.parameters(), verbose=False, **kwargs)
    assert str(error.value) == message


def test_registration_table_and_unsupported_layers_fall_back(capsys):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = KFAC(model.parameters(), model=model)
    table = capsys.readouterr().out
    assert "grouped/depthwise conv" in table and "module type" in table
    assert [layer.name for layer in opt.layers] == ["3"]
    x, y = torch.randn(5, 4, 3, 3), torch.randint(0, 2, (5,))
    loss = opt.step(protocol_closure(model, x, y))
    assert torch.is_tensor(loss) and all(torch.isfinite(p).all() for p in model.parameters())


def test_trains_a_small_cnn():
    torch.manual_seed(5)
    model = SmallCNN()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    opt = KFAC(model.parameters(), model=model, lr=0.1, damping=3e-2, inv_update_freq=5, verbose=False)
    losses = training_losses(model, opt, x, y, 20)
    assert losses[-1] < 0.7 * losses[0]


def test_trains_a_linear_cell_rnn_on_delayed_xor():
    torch.manual_seed(6)
    model = LinearCellRNN(vocab=2, embed=4, hidden=16, classes=2)
    tokens, targets = delayed_xor_batch(32, 8, delay=1)
    opt = KFAC(model.parameters(), model=model, lr=0.3, damping=3e-2, inv_update_freq=5, verbose=False)
    losses = training_losses(model, opt, tokens, targets, 30)
    assert losses[-1] < 0.8 * losses[0]


def test_mc_fisher_extra_pass_leaves_batchnorm_statistics_alone_and_trains():
    torch.manual_seed(7)
    model = SmallCNN()
    reference = copy.deepcopy(model)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    opt = KFAC(model.parameters(), model=model, lr=0.1, damping=3e-2, inv_update_freq=5, fisher="mc", verbose=False)
    closure = protocol_closure(model, x, y)
    losses = [opt.step(closure).item()]
    protocol_closure(reference, x, y)()  # one training forward: what the running statistics should have seen
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean)
    assert model.bn.num_batches_tracked.item() == 1
    losses += [opt.step(closure).item() for _ in range(19)]
    assert losses[-1] < 0.7 * losses[0]


def test_learning_rate_set_on_the_group_after_loading_is_used():
    torch.manual_seed(8)
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    opt = KFAC(model.parameters(), model=model, lr=0.1, verbose=False)
    opt.step(protocol_closure(model, x, y))
    opt.load_state_dict(opt.state_dict())
    for group in opt.param_groups:  # what the harness's schedules do
        group["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(protocol_closure(model, x, y))
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def _dense_step(a, g, v, damping, pi_damping):
    """-(A ⊗ G + λI)⁻¹ vec(V), or -((A + π√λI) ⊗ (G + √λ/π I))⁻¹ vec(V), formed densely (vec stacks columns)."""
    eye_a, eye_g = torch.eye(a.shape[0]), torch.eye(g.shape[0])
    if pi_damping:
        pi = ((a.trace() / a.shape[0]) / (g.trace() / g.shape[0])).sqrt()
        dense = torch.kron(a + pi * damping**0.5 * eye_a, g + damping**0.5 / pi * eye_g)
    else:
        dense = torch.kron(a, g) + damping * torch.eye(a.shape[0] * g.shape[0])
    return -torch.linalg.solve(dense, v.T.reshape(-1)).reshape(a.shape[0], g.shape[0]).T


@pytest.mark.parametrize("pi_damping", [False, True])
def test_conv_linear_and_embedding_steps_equal_the_dense_kronecker_solve(float64, pi_damping):
    torch.manual_seed(9)
    embed, conv, head = nn.Embedding(5, 2 * 4 * 4), nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 4 * 4, 3)
    model = nn.Sequential(embed, nn.Unflatten(1, (2, 4, 4)), conv, nn.Tanh(), nn.Flatten(), head)
    x, y = torch.randint(0, 5, (6,)), torch.randint(0, 3, (6,))
    protocol_closure(model, x, y)()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    damping = 0.1
    opt = KFAC(model.parameters(), model=model, lr=1.0, momentum=0.0, factor_decay=0.0, kl_clip=None,
               damping=damping, pi_damping=pi_damping, verbose=False)
    opt.step(protocol_closure(model, x, y))
    step = {name: p.detach() - before[name] for name, p in model.named_parameters()}
    for prefix, layer in (("2", conv), ("5", head)):
        v = torch.cat([grads[f"{prefix}.weight"].reshape(layer.weight.shape[0], -1), grads[f"{prefix}.bias"][:, None]], 1)
        state = opt.state[layer.weight]
        expected = _dense_step(state["A"], state["G"], v, damping, pi_damping)
        got = torch.cat([step[f"{prefix}.weight"].reshape(layer.weight.shape[0], -1), step[f"{prefix}.bias"][:, None]], 1)
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    state = opt.state[embed.weight]  # Linear orientation: V = ∇Wᵀ (d × vocab), A = diag(counts) / rows
    expected = _dense_step(torch.diag(state["A"]), state["G"], grads["0.weight"].T, damping, pi_damping)
    torch.testing.assert_close(step["0.weight"], expected.T, rtol=1e-8, atol=1e-12)


def test_padded_targets_do_not_count_in_the_gradient_factor():
    """Ĝ = M Σ g gᵀ with M the number of targets the loss averages: padded positions (-100) have zero gradient and
    must not count, so Ĝ on a padded batch equals Ĝ on its unpadded tokens alone."""
    torch.manual_seed(9)
    layer = nn.Linear(4, 3)
    x, y = torch.randn(2, 5, 4), torch.randint(0, 3, (2, 5))
    y[0, 3:] = -100
    y[1, 1:] = -100
    real = y != -100
    factors = []
    for inputs, targets in ((x, y), (x[real].unsqueeze(0), y[real].unsqueeze(0))):
        model = copy.deepcopy(layer)
        opt = KFAC(model.parameters(), model=model, lr=0.0, factor_decay=0.0, verbose=False)
        opt.step(protocol_closure(model, inputs, targets))
        factors.append(opt.state[model.weight]["G"])
    torch.testing.assert_close(factors[0], factors[1])
