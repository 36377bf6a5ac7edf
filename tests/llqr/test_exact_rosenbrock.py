"""The Rosenbrock formulations (llqr_spec.md §7): exact LQR = Newton, the closed-form LQR ingredients,
and the relaxation's inner loop."""
import torch

from llqr import geometry as geo
from llqr import rosenbrock as R
from llqr.stages import build_stages

POINTS = [(-1.2, 1.0), (0.5, -0.3), (1.3, 1.5), (0.0, 0.5)]


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_closed_form_gradient_and_hessian_match_autograd():
    for p in POINTS:
        theta = t(*p)
        g, H = R.grad_and_hessian(theta)
        th = theta.clone().requires_grad_()
        assert torch.allclose(g, torch.autograd.grad(R.rosenbrock(th), th)[0], rtol=1e-14, atol=1e-12)
        assert torch.allclose(H, torch.autograd.functional.hessian(R.rosenbrock, theta), rtol=1e-14, atol=1e-12)


def test_two_layer_split_computes_rosenbrock():
    for p in POINTS:
        theta = t(*p)
        assert torch.allclose(R.split_model(theta)(R.split_input()), R.rosenbrock(theta).reshape(1))


def test_riccati_on_two_layer_split_equals_newton():
    """Spec §7 ✓[R1] (at (0.0, 0.5) H is indefinite: the stationary point −H⁻¹g is still returned)."""
    for p in POINTS:
        theta = t(*p)
        a, b = R.riccati_step(theta), R.newton_step(theta)
        assert ((a - b).norm() / b.norm()).item() < 1e-10, p


def test_stage_hamiltonian_terms_match_closed_form():
    """Spec §7 [R]: R_0 = 2(1 − 2b(y−x²)); Q_1[z2z2] = 2b, Q_1[z2z3] = −2(y−x²); S_1 = (0, −2b, 2(y−x²)); R_1 = 2b."""
    x, y, b = -1.2, 1.0, 100.0
    stages = build_stages(R.split_model(t(x, y)))
    s = R.split_input()
    with torch.no_grad():
        z = stages[0].fn(s, tuple(stages[0].params))
    r = y - x * x
    mu1 = t(1.0, 1 - 2 * b * r, r * r)  # λ_1 = ∂f_1/∂z (ℓ linear: λ_2 = 1)
    Q1, S1, R1 = geo.stage_hamiltonian_hessian(stages[1], z, t(1.0), first=False)
    assert torch.allclose(Q1, torch.tensor([[0, 0, 0], [0, 2 * b, -2 * r], [0, -2 * r, 0]], dtype=torch.float64))
    assert torch.allclose(S1, t(0, -2 * b, 2 * r).reshape(1, 3))
    assert torch.allclose(R1, t(2 * b).reshape(1, 1))
    _, _, R0 = geo.stage_hamiltonian_hessian(stages[0], s, mu1, first=True)
    assert torch.allclose(R0, t(2 * (1 - 2 * b * r)).reshape(1, 1))


def test_riccati_trajectory_tracks_newton():
    """Spec §10 [R3]: from (−1.2, 1) at lr 1 both reach f < 1e-20 within 7 steps, trajectories agree."""
    a = b = t(-1.2, 1.0)
    for _ in range(7):
        a, b = a + R.riccati_step(a), b + R.newton_step(b)
        assert (a - b).norm() < 1e-12
    assert R.rosenbrock(a) < 1e-20


def test_pullback_equals_autograd_on_J():
    g, H = R.grad_and_hessian(t(0.3, -0.4))
    d = -g
    for structure, leaves in [("scalar", [t(0.7), t(-0.2)]), ("dense", [t(0.3, -0.5, 0.8, 1.1)])]:
        U = R.RelaxedU(structure)
        U.leaves = [leaf.tolist() for leaf in leaves]
        u = t(*U.apply_floats(d.tolist()))
        gamma = g + H @ u
        ours = [t(*v) for v in U.pullback(gamma.tolist(), d.tolist())]
        phi = [leaf.clone().requires_grad_() for leaf in leaves]
        u_t = (torch.cat([phi[0] * d[0:1], phi[1] * d[1:2]]) if structure == "scalar"
               else phi[0].reshape(2, 2) @ d)
        J = g @ u_t + 0.5 * u_t @ H @ u_t
        auto = torch.autograd.grad(J, phi)
        for o, a in zip(ours, auto):
            assert torch.allclose(o, a, rtol=1e-12)


def test_dense_refit_with_papers_inner_setting_matches_spec_check():
    """Spec §10 [V1]: dense U, single layer, at (−1.2, 1), paper's literal inner lr 1e−4, clip 5, 500 steps:
    cos(Ud, −H⁻¹g) = +0.9652 (computed there independently, in llqr_check.py)."""
    theta = t(-1.2, 1.0)
    g, H = R.grad_and_hessian(theta)
    U = R.RelaxedU("dense")
    U.refit(g, H, R.InnerConfig(steps=500, lr=1e-4, clip=5.0))
    assert abs(R.cosine(U.apply(-g), R.newton_step(theta)) - 0.9652) < 5e-4
