"""Every curvature path through training-mode BatchNorm against central finite differences (issue 5 §4).

With torch 2.14.1, forward-over-reverse (torch.func.hessian, jvp of grad) through batch_norm in training
mode with affine parameters returns a wrong Hessian; llqr uses double backward everywhere. These tests
check the paths llqr actually uses: the BatchNorm stage's Jacobians (A, B) and its Hamiltonian Hessian
blocks (Q, S, R), and the dense reference's full-loss Hessian.
"""
import torch
import torch.nn.functional as F
from torch import nn

from llqr import exact
from llqr import geometry as geo
from llqr.stages import build_stages, flatten_params, flatten_state, unflatten_params, unflatten_state

EPS = 1e-5


def make_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3)).double().train()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 2, 1, 2])
    return model, x, t


def fd_jacobian(f, z):
    """Central differences of a vector function f at z: columns ∂f/∂z_j."""
    cols = []
    for e in torch.eye(z.numel(), dtype=z.dtype):
        cols.append((f(z + EPS * e) - f(z - EPS * e)) / (2 * EPS))
    return torch.stack(cols, 1)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def bn_stage_and_input():
    model, x, t = make_cnn()
    stages = build_stages(model)
    with torch.no_grad():
        x1 = stages[0].fn(x, tuple(stages[0].params))
    return stages[1], x1


def test_batchnorm_stage_jacobians_match_finite_differences():
    stage, x1 = bn_stage_and_input()
    A, B = geo.stage_jacobians(stage, x1, first=False)
    xv, tv = flatten_state(x1), flatten_params([p.detach() for p in stage.params])

    def f(z):
        xs, ts = z[:xv.numel()], z[xv.numel():]
        return flatten_state(stage.fn(unflatten_state(xs, x1), unflatten_params(ts, stage.params)))

    with torch.no_grad():
        fd = fd_jacobian(f, torch.cat([xv, tv]))
    assert rel(torch.cat([A, B], 1), fd) < 1e-8


def test_batchnorm_stage_hamiltonian_hessian_matches_finite_differences():
    """Q, S (the coupling of BN's affine parameters with its input) and R of μᵀf for a random costate μ."""
    stage, x1 = bn_stage_and_input()
    mu = torch.randn(flatten_state(x1).numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    Q, S, R = geo.stage_hamiltonian_hessian(stage, x1, mu, first=False)
    xv, tv = flatten_state(x1), flatten_params([p.detach() for p in stage.params])
    n = xv.numel()

    def grad_h(z):
        z = z.clone().requires_grad_()
        out = stage.fn(unflatten_state(z[:n], x1), unflatten_params(z[n:], stage.params))
        return torch.autograd.grad(torch.dot(mu, flatten_state(out)), z)[0]

    fd = fd_jacobian(grad_h, torch.cat([xv, tv]))
    full = torch.cat([torch.cat([Q, S.T], 1), torch.cat([S, R], 1)], 0)
    assert rel(full, fd) < 1e-7
    assert rel(S, fd[n:, :n]) < 1e-7  # the block forward-over-reverse gets wrong


def test_dense_newton_hessian_through_batchnorm_matches_finite_differences():
    model, x, t = make_cnn()
    _, g, H = exact.dense_curvature(model, "cross_entropy", x, t, "newton")
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    def grad_at(th):
        th = th.clone().requires_grad_()
        pieces = dict(zip(names, unflatten_params(th, params)))
        pieces.update({n: b.clone() for n, b in model.named_buffers()})
        out = torch.func.functional_call(model, pieces, (x,))
        return torch.autograd.grad(F.cross_entropy(out, t), th)[0]

    fd = fd_jacobian(grad_at, flatten_params([p.detach() for p in params]))
    assert rel(H, fd) < 1e-7
    # and so the exact LQR Newton step through BatchNorm matches a finite-difference Newton step
    expected = -torch.linalg.solve(0.5 * (fd + fd.T) + 0.1 * torch.eye(fd.shape[0], dtype=fd.dtype), g)
    step = torch.cat([s.reshape(-1) for s in exact.lqr_step(model, "cross_entropy", x, t, "newton", damping=0.1)])
    assert rel(step, expected) < 1e-6
