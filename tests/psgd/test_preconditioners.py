"""Unit checks of each preconditioner against dense matrices formed explicitly (psgd_notes.md §5.2 item 7)."""

import pytest
import torch

from psgd import kron, lra, newton, xmat
from psgd.random_source import RandomSource

F64 = torch.float64
TINY = torch.finfo(F64).tiny


def _random_lra(n=50, rank=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"U": 0.3 * torch.randn(n, rank, generator=g, dtype=F64), "V": 0.3 * torch.randn(n, rank, generator=g, dtype=F64),
            "d": 0.5 + torch.rand(n, 1, generator=g, dtype=F64)}


def _random_xmat(n=51, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = 0.3 * torch.randn(n, generator=g, dtype=F64)
    b[n // 2] = 0.0  # odd n: the middle entry of b is kept at 0 by the update
    return {"a": 1.0 + torch.rand(n, generator=g, dtype=F64), "b": b}


def _random_newton(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"Q": torch.triu(0.1 * torch.randn(n, n, generator=g, dtype=F64)) + torch.eye(n, dtype=F64)}


def _random_factor(size, kind, g):
    if kind == "dense":
        return torch.triu(0.2 * torch.randn(size, size, generator=g, dtype=F64)) + torch.eye(size, dtype=F64)
    if kind == "diag":
        return 0.5 + torch.rand(size, generator=g, dtype=F64)
    q = torch.stack([0.5 + torch.rand(size, generator=g, dtype=F64), 0.3 * torch.randn(size, generator=g, dtype=F64)])
    q[1, -1] = 0.0
    return q


def _random_kron(m=6, n=5, kinds=("dense", "dense"), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"Ql": _random_factor(m, kinds[0], g), "Qr": _random_factor(n, kinds[1], g),
            "Ql_kind": kinds[0], "Qr_kind": kinds[1]}


KRON_KINDS = [(a, b) for a in ("dense", "diag", "norm") for b in ("dense", "diag", "norm")]


def test_lra_precondition_equals_dense():
    state = _random_lra()
    g = torch.randn(50, 1, dtype=F64)
    Q = lra.dense_q(state)
    torch.testing.assert_close(lra.precondition(state, g), Q.t() @ Q @ g, rtol=1e-12, atol=1e-12)


def test_xmat_precondition_equals_dense():
    state = _random_xmat()
    g = torch.randn(51, dtype=F64)
    Q = xmat.dense_q(state)
    torch.testing.assert_close(xmat.precondition(state, g), Q.t() @ Q @ g, rtol=1e-12, atol=1e-12)


def test_newton_precondition_equals_dense():
    state = _random_newton()
    g = torch.randn(50, 1, dtype=F64)
    Q = state["Q"]
    torch.testing.assert_close(newton.precondition(state, g), Q.t() @ (Q @ g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kinds", KRON_KINDS)
def test_kron_precondition_equals_dense(kinds):
    state = _random_kron(kinds=kinds)
    G = torch.randn(6, 5, dtype=F64)
    Q = kron.dense_q(state)
    expected = (Q.t() @ Q @ G.t().reshape(-1)).reshape(5, 6).t()  # vec() in column-major order
    torch.testing.assert_close(kron.precondition(state, G), expected, rtol=1e-12, atol=1e-12)


def _dense_p_diagonal(Q):
    return torch.diagonal(Q.t() @ Q)


@pytest.mark.parametrize("middle_b", [0.0, 0.4])
def test_p_diagonal_of_xmat_equals_dense(middle_b):
    state = _random_xmat()
    state["b"][51 // 2] = middle_b  # the middle entry, where the diagonal and the anti-diagonal cross
    torch.testing.assert_close(xmat.p_diagonal(state), _dense_p_diagonal(xmat.dense_q(state)), rtol=1e-12, atol=1e-12)


def test_p_diagonal_of_lra_and_newton_equals_dense():
    for module, state in ((lra, _random_lra()), (lra, _random_lra(rank=0)), (newton, _random_newton())):
        expected = _dense_p_diagonal(module.dense_q(state))
        torch.testing.assert_close(module.p_diagonal(state), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kinds", KRON_KINDS)
def test_p_diagonal_of_kron_equals_dense(kinds):
    state = _random_kron(kinds=kinds)
    expected = _dense_p_diagonal(kron.dense_q(state)).reshape(5, 6).t()  # vec() in column-major order
    torch.testing.assert_close(kron.p_diagonal(state), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "diag", "norm"])
def test_kron_factor_inverse_transpose_equals_solve(kind):
    q = _random_factor(7, kind, torch.Generator().manual_seed(4))
    X = torch.randn(7, 3, dtype=F64)
    dense = kron.dense_factor(q, kind)
    torch.testing.assert_close(kron._left_inv_t(q, kind, X), torch.linalg.solve(dense.t(), X), rtol=1e-10, atol=1e-12)


def test_kron_norm_step_stays_in_its_group():
    """Q ← Q − μGQ with G on the diagonal-plus-last-column algebra equals the dense product (and keeps the form)."""
    g = torch.Generator().manual_seed(5)
    q = _random_factor(6, "norm", g)
    M, N = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64)
    grad = kron._gradient("norm", M, N)
    dense_grad = kron.dense_factor(grad, "norm")
    expected = kron.dense_factor(q, "norm") - 0.01 * dense_grad @ kron.dense_factor(q, "norm")
    kron._step(q, "norm", grad, 0.01)
    torch.testing.assert_close(kron.dense_factor(q, "norm"), expected, rtol=1e-12, atol=1e-12)


def test_lra_woodbury_equals_direct_solve():
    state = _random_lra()
    v = torch.randn(50, 1, dtype=F64)
    _, iQtv, iPv = lra._woodbury(state["U"], state["V"], state["d"], v)
    Q = lra.dense_q(state)
    torch.testing.assert_close(iQtv, torch.linalg.solve(Q.t(), v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(iPv, torch.linalg.solve(Q.t() @ Q, v), rtol=1e-10, atol=1e-12)


def _criterion(P, v, h):
    """hᵀPh + vᵀP⁻¹v, the PSGD fitting criterion (paper eq. (2)) for one pair."""
    return float(h.reshape(-1) @ P @ h.reshape(-1) + v.reshape(-1) @ torch.linalg.solve(P, v.reshape(-1)))



@pytest.mark.parametrize("block_rows", [1, 7, 50, 1 << 16])
def test_lra_blocked_rank_two_step_is_bitwise_the_reference_expression(block_rows):
    """The U/V step applied in row blocks equals the reference's M − mu·(a.mm(c) − b.mm(e)) bit for bit, whatever
    the block size (the reference-trajectory tests only see one block: their n is below 2^16)."""
    g = torch.Generator().manual_seed(3)
    n, r = 50, 4
    M, a, b = (torch.randn(n, k, generator=g) for k in (r, 1, 1))
    c, e = torch.randn(1, r, generator=g), torch.randn(1, r, generator=g)
    mu = torch.tensor(0.37)
    expected = M - mu * (a.mm(c) - b.mm(e))
    lra._sub_rank_two_(M, mu, a, c, b, e, block_rows=block_rows)
    assert torch.equal(M, expected)

@pytest.mark.parametrize("family", ["lra", "diag", "xmat", "newton", "kron", "kron-diag-norm", "kron-norm-dense"])
def test_one_update_lowers_criterion(family):
    torch.manual_seed(1)
    n = 30
    if family in ("lra", "diag"):
        state = _random_lra(n=n, rank=0 if family == "diag" else 4)
        v, h = torch.randn(n, 1, dtype=F64), torch.randn(n, 1, dtype=F64)
        dense = lambda: lra.dense_q(state)  # noqa: E731
        step = lambda: lra.update(state, v, h, 0.01, TINY, RandomSource(0))  # noqa: E731
    elif family == "xmat":
        state = _random_xmat(n=n)
        v, h = torch.randn(n, dtype=F64), torch.randn(n, dtype=F64)
        dense = lambda: xmat.dense_q(state)  # noqa: E731
        step = lambda: xmat.update(state, v, h, 0.01, TINY)  # noqa: E731
    elif family == "newton":
        state = _random_newton(n=n)
        v, h = torch.randn(n, 1, dtype=F64), torch.randn(n, 1, dtype=F64)
        dense = lambda: state["Q"]  # noqa: E731
        step = lambda: newton.update(state, v, h, 0.01, TINY)  # noqa: E731
    else:
        kinds = {"kron": ("dense", "dense"), "kron-diag-norm": ("diag", "norm"), "kron-norm-dense": ("norm", "dense")}
        state = _random_kron(m=6, n=5, kinds=kinds[family])
        V, H = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
        v, h = V.t().reshape(-1), H.t().reshape(-1)
        dense = lambda: kron.dense_q(state)  # noqa: E731
        step = lambda: kron.update(state, V, H, 0.01, TINY)  # noqa: E731
    Q = dense()
    before = _criterion(Q.t() @ Q, v, h)
    step()
    Q = dense()
    assert _criterion(Q.t() @ Q, v, h) < before


def test_rank_zero_lra_is_the_diagonal_formula():
    """notes §3.1: Ph = d²h, P⁻¹v = v/d², ∇d = Ph∘h − v∘P⁻¹v, μ = lr_p/max|∇d|, d ← d − μ d∇d; Pg = d²g."""
    n = 40
    d0 = 0.5 + torch.rand(n, 1, dtype=F64)
    state = {"U": torch.zeros(n, 0, dtype=F64), "V": torch.zeros(n, 0, dtype=F64), "d": d0.clone()}
    v, h, g = (torch.randn(n, 1, dtype=F64) for _ in range(3))
    lra.update(state, v, h, 0.05, TINY, RandomSource(0))
    nabla = d0 * d0 * h * h - v * v / (d0 * d0)
    expected = d0 - 0.05 / nabla.abs().max() * d0 * nabla
    torch.testing.assert_close(state["d"], expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(lra.precondition(state, g), expected ** 2 * g, rtol=1e-14, atol=0)


def _spd(n, eigenvalues, seed):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return basis @ torch.diag(eigenvalues) @ basis.t(), basis


def _newton_preconditioner_fitted_to(H, updates, lr_preconditioner=0.01):
    """P = QᵀQ of the dense Newton preconditioner after `updates` fits on pairs (v, Hv), v ~ N(0, I), Q0 = I."""
    state = newton.init_state(H.shape[0], 1.0, F64, "cpu")
    for _ in range(updates):
        v = torch.randn(H.shape[0], 1, dtype=F64)
        newton.update(state, v, H @ v, lr_preconditioner, TINY)
    return state["Q"].t() @ state["Q"]


def test_newton_converges_to_inverse_hessian_spd():
    """notes §5.2 item 7(d): n = 20, eigenvalues logspace(−1, 1), Q0 = I, lr_p = 0.01; the reference reaches
    ‖PH − I‖₂ ≈ 0.094 after 5k updates (ours: 0.09–0.14 over three seeds). We allow 0.2."""
    torch.manual_seed(0)
    H, _ = _spd(20, torch.logspace(-1, 1, 20, dtype=F64), seed=0)
    P = _newton_preconditioner_fitted_to(H, updates=5000)
    assert torch.linalg.matrix_norm(P @ H - torch.eye(20, dtype=F64), 2) < 0.2


def test_newton_converges_to_inverse_abs_hessian_indefinite():
    """Indefinite H (alternating signs): P → |H|⁻¹. The reference reaches ‖P|H| − I‖₂ ≈ 0.57 after 40k updates at
    lr_p = 0.01; ours measured 0.37–0.48 after 20k updates over three seeds. We run 20k and allow 0.8."""
    torch.manual_seed(0)
    eig = torch.logspace(-1, 1, 20, dtype=F64) * torch.tensor([(-1.0) ** i for i in range(20)], dtype=F64)
    H, basis = _spd(20, eig, seed=1)
    abs_H = basis @ torch.diag(eig.abs()) @ basis.t()
    P = _newton_preconditioner_fitted_to(H, updates=20000)
    assert torch.linalg.matrix_norm(P @ abs_H - torch.eye(20, dtype=F64), 2) < 0.8


@pytest.mark.parametrize("family", ["diag", "xmat"])
def test_diagonal_hessian_fixed_point(family):
    """Diagonal H = logspace(−1, 1): the reference reaches max|P_ii h_ii − 1| ≈ 1.5e-2 (r = 0) / 1.0e-2 (XMat)
    after 40k updates at lr_p = 0.01; ours measured 0.014–0.019 after 15k over three seeds. We allow 0.05."""
    torch.manual_seed(0)
    n = 20
    hdiag = torch.logspace(-1, 1, n, dtype=F64)
    rng = RandomSource(0)
    state = lra.init_state(n, 0, 1.0, F64, "cpu", rng) if family == "diag" else xmat.init_state(n, 1.0, F64, "cpu")
    for _ in range(15000):
        v = torch.randn(n, dtype=F64)
        if family == "diag":
            lra.update(state, v[:, None], (hdiag * v)[:, None], 0.01, TINY, rng)
        else:
            xmat.update(state, v, hdiag * v, 0.01, TINY)
    Q = lra.dense_q(state) if family == "diag" else xmat.dense_q(state)
    P = Q.t() @ Q
    assert (torch.diagonal(P) * hdiag - 1).abs().max() < 0.05


def test_kron_converges_to_kronecker_inverse():
    """H = kron(B, A) with A, B SPD: dense-dense Kron can represent H⁻¹ exactly; check ‖PH − I‖₂ after 8k updates
    at lr_p = 0.01 (ours measured 0.03–0.04 over three seeds; we allow 0.1)."""
    torch.manual_seed(0)
    A, _ = _spd(4, torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64), seed=2)
    B, _ = _spd(3, torch.tensor([0.3, 1.0, 2.0], dtype=F64), seed=3)
    state = {"Ql": torch.eye(4, dtype=F64), "Qr": torch.eye(3, dtype=F64), "Ql_kind": "dense", "Qr_kind": "dense"}
    for _ in range(8000):
        V = torch.randn(4, 3, dtype=F64)
        kron.update(state, V, A @ V @ B, 0.01, TINY)  # vec(A V B) = kron(B, A) vec(V) (B symmetric)
    Q = kron.dense_q(state)
    H = torch.kron(B, A)
    assert torch.linalg.matrix_norm(Q.t() @ Q @ H - torch.eye(12, dtype=F64), 2) < 0.1


def test_xmat_cached_coefficients_follow_changes_of_a_and_b():
    """The cache of P's diagonals (kept between preconditioner updates) is refreshed when a or b changes in place
    or is replaced, and its P·g is the dense QᵀQ·g."""
    state, cache = _random_xmat(), xmat.Coefficients()
    g = torch.randn(51, dtype=F64)
    for change in (None, lambda s: s["a"].mul_(1.5), lambda s: s["b"].add_(0.1), lambda s: s.update(b=-s["b"])):
        if change is not None:
            change(state)
        Q = xmat.dense_q(state)
        torch.testing.assert_close(xmat.precondition(state, g, cache), Q.t() @ Q @ g, rtol=1e-12, atol=1e-12)
    assert torch.equal(xmat.precondition(state, g, cache), xmat.precondition(state, g))
