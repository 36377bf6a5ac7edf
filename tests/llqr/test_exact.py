"""The exact layerwise LQR step equals the dense solve −lr·(M + λI)⁻¹g (issue 5 §1, §4; spec §3 Theorem)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import functional_call

from llqr import exact
from llqr.stages import Residual

GEOMETRIES = ["euclidean", "gauss_newton", "natural_gradient", "newton"]


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a, b):
    a, b = flat(a), flat(b)
    return ((a - b).norm() / b.norm()).item()


def make_mlp(act, out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 4), act(), nn.Linear(4, out)).double()


def make_batch(loss, n=5, out=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        return x, torch.randint(0, out, (n,), generator=g)
    return x, torch.randn(n, out, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_mlp_lqr_equals_dense(act, loss, geometry):
    model = make_mlp(act)
    x, t = make_batch(loss)
    a = exact.lqr_step(model, loss, x, t, geometry, damping=0.05, lr=0.7)
    b = exact.dense_step(model, loss, x, t, geometry, damping=0.05, lr=0.7)
    assert [s.shape for s in a] == [p.shape for p in model.parameters()]
    assert rel_err(a, b) < 1e-10


def test_newton_indefinite_small_damping():
    """Spec §3: an indefinite but nonsingular H + λI still gives the stationary point −(H+λI)⁻¹g."""
    model = make_mlp(nn.Tanh, seed=3)
    x, t = make_batch("cross_entropy", seed=4)
    _, _, H = exact.dense_curvature(model, "cross_entropy", x, t, "newton")
    assert torch.linalg.eigvalsh(H)[0] < -0.5  # H + 0.05·I is indefinite
    a = exact.lqr_step(model, "cross_entropy", x, t, "newton", damping=0.05)
    b = exact.dense_step(model, "cross_entropy", x, t, "newton", damping=0.05)
    assert rel_err(a, b) < 1e-10


def test_cnn_with_batchnorm_lqr_equals_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3)).double().train()
    bn = model[1]
    with torch.no_grad():  # non-trivial affine parameters
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 2, 1, 2])
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    for geometry in GEOMETRIES:
        a = exact.lqr_step(model, "cross_entropy", x, t, geometry, damping=0.1)
        b = exact.dense_step(model, "cross_entropy", x, t, geometry, damping=0.1)
        assert rel_err(a, b) < 1e-10, geometry
    after = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    assert all(torch.equal(u, v) for u, v in zip(before, after))  # running statistics untouched


def test_residual_network_lqr_equals_dense():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model = nn.Sequential(nn.Linear(3, 4), Residual(block, nn.Linear(4, 4, bias=False)), nn.Tanh(),
                          Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())), nn.Linear(4, 3)).double()
    for loss in ["cross_entropy", "mse"]:
        x, t = make_batch(loss, n=4)
        for geometry in GEOMETRIES:
            a = exact.lqr_step(model, loss, x, t, geometry, damping=0.1, lr=0.3)
            b = exact.dense_step(model, loss, x, t, geometry, damping=0.1, lr=0.3)
            assert rel_err(a, b) < 1e-10, (loss, geometry)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_euclidean_is_minus_lr_grad(loss):
    model = make_mlp(nn.Tanh)
    x, t = make_batch(loss)
    model.zero_grad()
    out = model(x)
    value = F.cross_entropy(out, t) if loss == "cross_entropy" else 0.5 * (out - t).pow(2).sum() / x.shape[0]
    value.backward()
    step = exact.lqr_step(model, loss, x, t, "euclidean", lr=0.37)
    expected = [-0.37 * p.grad for p in model.parameters()]
    assert rel_err(step, expected) < 1e-14


def test_natural_gradient_equals_gauss_newton_for_softmax():
    """For softmax-CE the Fisher equals the GGN (spec §2 ✓[M3]); dense_step forms them by separate formulas."""
    model = make_mlp(nn.Tanh)
    x, t = make_batch("cross_entropy")
    a = exact.dense_step(model, "cross_entropy", x, t, "natural_gradient", damping=0.05)
    b = exact.dense_step(model, "cross_entropy", x, t, "gauss_newton", damping=0.05)
    assert rel_err(a, b) < 1e-12


def explicit_jacobian(module, x, params):
    """∂ module(x) / ∂ params, flattened, with the parameters given by name (independent of llqr.stages)."""
    names = [n for n, _ in params]
    shapes = [p.shape for _, p in params]
    theta = flat([p.detach() for _, p in params])

    def f(th):
        pieces, o = {}, 0
        for n, s in zip(names, shapes):
            pieces[n] = th[o:o + s.numel()].reshape(s)
            o += s.numel()
        return functional_call(module, pieces, (x,)).reshape(-1)

    return jacobian(f, theta)


def test_intermediate_layer_metric_against_explicit_formula():
    """M = JᵀH_outJ + c·J₂ᵀJ₂ + J₄ᵀWJ₄ with W an SPD matrix (spec §2 [R] ✓[M4])."""
    model = make_mlp(nn.Tanh)
    x, t = make_batch("cross_entropy")
    params = list(model.named_parameters())
    c, damping = 0.3, 0.02
    g_ = torch.Generator().manual_seed(5)
    R = torch.randn(20, 20, generator=g_, dtype=torch.float64)
    W = R @ R.T / 20
    J_out = explicit_jacobian(model, x, params)
    J2 = explicit_jacobian(model[:2], x, [(n, p) for n, p in params if n.startswith("0.")])
    J2 = torch.cat([J2, torch.zeros(J2.shape[0], J_out.shape[1] - J2.shape[1], dtype=J2.dtype)], 1)
    J4 = explicit_jacobian(model[:4], x, [(n, p) for n, p in params if n[0] in "02"])
    J4 = torch.cat([J4, torch.zeros(J4.shape[0], J_out.shape[1] - J4.shape[1], dtype=J4.dtype)], 1)
    p = torch.softmax(model(x), -1).detach()
    H_out = torch.block_diag(*[torch.diag(pn) - torch.outer(pn, pn) for pn in p]) / x.shape[0]
    M = J_out.T @ H_out @ J_out + c * J2.T @ J2 + J4.T @ W @ J4
    model.zero_grad()
    F.cross_entropy(model(x), t).backward()
    g = flat([q.grad for q in model.parameters()])
    expected = -torch.linalg.solve(M + damping * torch.eye(M.shape[0], dtype=M.dtype), g)
    step = exact.lqr_step(model, "cross_entropy", x, t, "gauss_newton", damping=damping,
                          hidden_metrics={2: c, 4: W})
    assert ((flat(step) - expected).norm() / expected.norm()).item() < 1e-10
    dense = exact.dense_step(model, "cross_entropy", x, t, "gauss_newton", damping=damping,
                             hidden_metrics={2: c, 4: W})
    assert ((flat(dense) - expected).norm() / expected.norm()).item() < 1e-10


def test_newton_dense_hessian_matches_finite_differences():
    """The dense reference's Newton step against a step built from a finite-difference Hessian."""
    model = make_mlp(nn.Tanh)
    x, t = make_batch("mse")
    params = list(model.parameters())
    theta0 = flat([p.detach() for p in params])

    def grad_at(th):
        th = th.clone().requires_grad_()
        pieces, o = [], 0
        for p in params:
            pieces.append(th[o:o + p.numel()].reshape(p.shape))
            o += p.numel()
        out = functional_call(model, {n: q for (n, _), q in zip(model.named_parameters(), pieces)}, (x,))
        return torch.autograd.grad(0.5 * (out - t).pow(2).sum() / x.shape[0], th)[0]

    eps, P = 1e-5, theta0.numel()
    H = torch.stack([(grad_at(theta0 + eps * e) - grad_at(theta0 - eps * e)) / (2 * eps)
                     for e in torch.eye(P, dtype=torch.float64)], 1)
    H = 0.5 * (H + H.T)
    g = grad_at(theta0.clone())
    expected = -torch.linalg.solve(H + 0.5 * torch.eye(P, dtype=H.dtype), g)
    step = exact.dense_step(model, "mse", x, t, "newton", damping=0.5)
    assert ((flat(step) - expected).norm() / expected.norm()).item() < 1e-7


def test_argument_validation():
    model = make_mlp(nn.Tanh)
    x, t = make_batch("cross_entropy")
    with pytest.raises(ValueError, match="Invalid loss: hinge"):
        exact.lqr_step(model, "hinge", x, t, "newton")
    with pytest.raises(ValueError, match="Invalid geometry: kfac"):
        exact.dense_step(model, "cross_entropy", x, t, "kfac")
    with pytest.raises(ValueError, match=r"Invalid damping: -1.0. Must be >= 0.0."):
        exact.lqr_step(model, "cross_entropy", x, t, "newton", damping=-1.0)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0.1. Must be >= 0.0."):
        exact.lqr_step(model, "cross_entropy", x, t, "newton", lr=-0.1)
    with pytest.raises(ValueError, match=r"Invalid hidden metric index: 6. Must be an int in \[1, 5\]."):
        exact.lqr_step(model, "cross_entropy", x, t, "gauss_newton", hidden_metrics={6: 1.0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lqr_equals_dense_on_cuda():
    model = make_mlp(nn.Tanh).cuda()
    x, t = make_batch("cross_entropy")
    x, t = x.cuda(), t.cuda()
    for geometry in GEOMETRIES:
        a = exact.lqr_step(model, "cross_entropy", x, t, geometry, damping=0.05)
        b = exact.dense_step(model, "cross_entropy", x, t, geometry, damping=0.05)
        assert all(s.device == p.device for s, p in zip(a, model.parameters()))
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_hidden_metrics_on_every_geometry_lqr_equals_dense(geometry):
    """Intermediate metrics on a hidden state and on the output state x_N (which, for natural_gradient
    with cross-entropy, sits before the appended log-softmax stage)."""
    model = make_mlp(nn.Tanh)
    x, t = make_batch("cross_entropy")
    metrics = {2: 0.3, 5: 0.1}
    a = exact.lqr_step(model, "cross_entropy", x, t, geometry, damping=0.05, hidden_metrics=metrics)
    b = exact.dense_step(model, "cross_entropy", x, t, geometry, damping=0.05, hidden_metrics=metrics)
    assert rel_err(a, b) < 1e-10
