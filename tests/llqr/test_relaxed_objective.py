"""The matrix-free LQR objective and the structures' pull-backs (llqr_spec.md §4.2, §4.3), float64.

Independent references: the curvature matrix formed densely (autograd Jacobians / double-backward Hessian),
finite differences through BatchNorm (issue 5 §4), and autograd through each structure's apply.
"""
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from llqr.objective import LQRObjective, mean_loss
from llqr.structures import STRUCTURES, make_structure


def _mlp(act=nn.Tanh):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).double()


def _bn_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 3)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    return model


def _flat_fn(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def unflatten(theta):
        out, k = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[k:k + s.numel()].view(s)
            k += s.numel()
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return {**buffers, **out}

    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return theta0, lambda theta, x: functional_call(model, unflatten(theta), (x,))


def _dense_curvature(f, theta0, x, loss_of_output, divergence):
    """The Hessian of loss∘f by double backward (newton), else the GGN Jᵀ ∇²loss J, formed explicitly."""
    if divergence == "newton":
        return hessian(lambda t: loss_of_output(f(t, x)), theta0)
    out = f(theta0, x).detach()
    jac = jacobian(lambda t: f(t, x), theta0).reshape(out.numel(), -1)
    return jac.T @ hessian(lambda o: loss_of_output(o.view_as(out)), out.reshape(-1)) @ jac


def _dense_metric(model, loss, x, y, divergence):
    """M formed explicitly: Jᵀ H_out J (GGN of the mean loss, × #terms for ngd) or the Hessian."""
    theta0, f = _flat_fn(model)
    m = _dense_curvature(f, theta0, x, lambda out: mean_loss(loss, out, y), divergence)
    out_shape = f(theta0, x).shape
    n = out_shape[:-1].numel() if loss == "cross_entropy" else out_shape[0]
    return m * n if divergence == "ngd" else m


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("divergence", ["ngd", "gauss_newton", "newton"])
def test_grad_u_equals_dense(loss, divergence):
    model = _mlp(nn.Tanh if loss == "cross_entropy" else nn.ReLU)
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,)) if loss == "cross_entropy" else torch.randn(6, 3, dtype=torch.float64)
    params = list(model.parameters())
    obj = LQRObjective(model, params, loss, x, y, divergence, damping=0.3)
    u = [torch.randn_like(p) for p in params]
    m = _dense_metric(model, loss, x, y, divergence)
    g = _flat(obj.g)
    want = g + (m + 0.3 * torch.eye(len(g), dtype=m.dtype)) @ _flat(u)
    assert _rel(_flat(obj.grad_u(u)), want) < 1e-12
    j_want = g @ _flat(u) + 0.5 * _flat(u) @ (m + 0.3 * torch.eye(len(g), dtype=m.dtype)) @ _flat(u)
    assert abs(float(obj.value(u)) - float(j_want)) < 1e-12 * abs(float(j_want))
    model.zero_grad()
    mean_loss(loss, model(x), y).backward()
    assert _rel(g, _flat([p.grad for p in params])) < 1e-13


@pytest.mark.parametrize("divergence", ["gauss_newton", "newton"])
def test_label_smoothed_objective_equals_dense(divergence):
    """g and M of torch's label-smoothed cross-entropy (the authors' final cost with label smoothing [C])."""
    model = _mlp()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    params = list(model.parameters())
    obj = LQRObjective(model, params, "cross_entropy", x, y, divergence, label_smoothing=0.1)
    theta0, f = _flat_fn(model)

    def smoothed(logits):
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)

    m = _dense_curvature(f, theta0, x, smoothed, divergence)
    g = torch.autograd.functional.jacobian(lambda t: smoothed(f(t, x)), theta0)
    assert _rel(_flat(obj.g), g) < 1e-13
    assert _rel(_flat(obj.g), _flat(LQRObjective(model, params, "cross_entropy", x, y, divergence).g)) > 1e-3
    u = [torch.randn_like(p) for p in params]
    assert _rel(_flat(obj.grad_u(u)), g + m @ _flat(u)) < 1e-12


@pytest.mark.parametrize("divergence", ["gauss_newton", "newton"])
def test_batchnorm_products_match_finite_differences(divergence):
    """Every curvature path through training-mode BatchNorm against central differences (issue 5 §4)."""
    model = _bn_cnn().train()
    x, y = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    running = model[1].running_mean.clone()
    params = list(model.parameters())
    obj = LQRObjective(model, params, "cross_entropy", x, y, divergence)
    u = [torch.randn_like(p) for p in params]
    mu = _flat(obj.metric_product(u))
    theta0, f = _flat_fn(model)
    eps, du = 1e-5, _flat(u)
    if divergence == "newton":  # H u ≈ (∇L(θ+εu) − ∇L(θ−εu)) / 2ε
        grad = lambda t: torch.autograd.functional.jacobian(lambda s: mean_loss("cross_entropy", f(s, x), y), t)
        fd = (grad(theta0 + eps * du) - grad(theta0 - eps * du)) / (2 * eps)
    else:  # Jᵀ H_out (J u) with J u by central differences and Jᵀ by reverse mode
        out = f(theta0, x)
        ju = (f(theta0 + eps * du, x) - f(theta0 - eps * du, x)) / (2 * eps)
        h = hessian(lambda o: mean_loss("cross_entropy", o.view_as(out), y), out.detach().reshape(-1))
        _, vjp = torch.autograd.functional.vjp(lambda t: f(t, x), theta0, (h @ ju.reshape(-1)).view_as(out))
        fd = vjp
    assert _rel(mu, fd) < 1e-7
    assert torch.equal(model[1].running_mean, running)  # refit products leave running stats alone


def test_dropout_masks_fixed_within_objective():
    """With dropout, M stays one symmetric matrix: vᵀ(Mu) = uᵀ(Mv) (a new mask per forward would break it)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).double().train()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    params = list(model.parameters())
    obj = LQRObjective(model, params, "cross_entropy", x, y, "gauss_newton")
    u, v = [torch.randn_like(p) for p in params], [torch.randn_like(p) for p in params]
    a, b = _flat(v) @ _flat(obj.metric_product(u)), _flat(u) @ _flat(obj.metric_product(v))
    assert abs(float(a - b)) < 1e-12 * abs(float(a))


SHAPES = [torch.Size([3, 2, 2, 2]), torch.Size([3])]


@pytest.mark.parametrize("kind", STRUCTURES)
@pytest.mark.parametrize("max_factor_dim", [4096, 2])
def test_pullback_equals_autograd(kind, max_factor_dim):
    """(∂u/∂φ)ᵀΓ from each structure equals autograd of J(u(φ)) for a dense quadratic J."""
    torch.manual_seed(3)
    s = make_structure(kind, ["weight", "bias"], SHAPES, max_factor_dim)
    factors = {k: v + 0.3 * torch.randn_like(v) for k, v in s.identity("cpu", torch.float64).items()}
    d = [torch.randn(sh, dtype=torch.float64) for sh in SHAPES]
    n = sum(sh.numel() for sh in SHAPES)
    a = torch.randn(n, n, dtype=torch.float64)
    a, g = a @ a.T, torch.randn(n, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in factors.items()}
    u = _flat(s.apply(leaves, d))
    j = g @ u + 0.5 * u @ a @ u
    auto = torch.autograd.grad(j, list(leaves.values()))
    gamma = (g + a @ u).detach()
    parts = [gamma[:SHAPES[0].numel()].view(SHAPES[0]), gamma[SHAPES[0].numel():]]
    mine = s.pullback(factors, d, parts)
    assert set(mine) == set(leaves)
    for key, want in zip(leaves, auto):
        assert _rel(mine[key], want) < 1e-13, key


@pytest.mark.parametrize("kind", STRUCTURES)
def test_identity_init(kind):
    s = make_structure(kind, ["weight", "bias"], SHAPES)
    d = [torch.randn(sh, dtype=torch.float64) for sh in SHAPES]
    for got, want in zip(s.apply(s.identity("cpu", torch.float64), d), d):
        assert torch.allclose(got, want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("divergence", ["ngd", "gauss_newton", "newton"])
def test_padded_positions_are_out_of_g_and_of_the_curvature(divergence):
    """Sequence outputs with padded targets (-100, as IWSLT batches): M is the GGN / Hessian of the loss the
    training loop minimises, which neither counts nor averages over the padded positions."""
    model = _mlp()
    x = torch.randn(3, 4, 4, dtype=torch.float64)  # (batch, positions, features)
    y = torch.randint(0, 3, (3, 4))
    y[0, 2:], y[2, 1:] = -100, -100
    counted = int((y != -100).sum())
    params = list(model.parameters())
    obj = LQRObjective(model, params, "cross_entropy", x, y, divergence)
    theta0, f = _flat_fn(model)
    loss = lambda logits: nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))  # noqa: E731
    m = _dense_curvature(f, theta0, x, loss, divergence)
    m = m * counted if divergence == "ngd" else m
    u = [torch.randn_like(p) for p in params]
    g = torch.autograd.functional.jacobian(lambda t: loss(f(t, x)), theta0)
    assert _rel(_flat(obj.g), g) < 1e-13
    assert _rel(_flat(obj.grad_u(u)), g + m @ _flat(u)) < 1e-12
