"""Low-rank approximation preconditioner ("LRA", the reference's `UVd`): Q = (I + U Vᵀ)·diag(d).

psgd_notes.md §3.3 (reference `update_precond_UVd_math_` / `precond_grad_UVd_math` @ f0fa983); paper §3.2 and
App. E.1. The code's factor order (diag on the right) is used, not the paper's diag(d)(I + UVᵀ) (notes §0 item 7).
Rank 0 is the diagonal ("Jacobi"/ESGD-like) preconditioner of the paper (notes §3.1).
All vectors are (n, 1) columns, as in the reference, so that the matrix products run the same kernels.
"""

import torch


def init_state(n, rank, init_scale, dtype, device, rng):
    """U, V ~ randn(n, r)/sqrt(n·r) and d = init_scale (notes §0 item 6). U then V are drawn here, as the
    reference's constructor does; the scale is computed from an integer tensor, i.e. in float32, as there."""
    scale = torch.tensor(n * rank) ** 0.5  # reference: cumsum of int64 sizes, then ** 0.5 (float32 result)
    U = rng.randn((n, rank), dtype, device) / scale
    V = rng.randn((n, rank), dtype, device) / scale
    d = torch.ones(n, 1, dtype=dtype, device=device) * init_scale
    return {"U": U, "V": V, "d": d}


def _ip_uvt(U, V, x):
    """(I + U Vᵀ) x, associated as x + U (Vᵀ x) (reference `IpUVtmatvec`)."""
    if U.shape[1] == 0:  # rank 0: U(Vᵀx) is a zero column; skip it (x + 0 = x in value)
        return x
    return x + U.mm(V.t().mm(x))


def precondition(state, g):
    """P g = diag(d) (I + V Uᵀ)(I + U Vᵀ) diag(d) g for a column g (reference `precond_grad_UVd_math`)."""
    U, V, d = state["U"], state["V"], state["d"]
    return d * _ip_uvt(V, U, _ip_uvt(U, V, d * g))


def _woodbury(U, V, d, v):
    """Q⁻ᵀ v and P⁻¹ v through the Woodbury identity with two r×r solves, IpVtUᵀ then IpVtU (notes §3.3)."""
    if U.shape[1] == 0:
        iQtv = v / d
        return None, iQtv, iQtv / d
    IpVtU = torch.eye(U.shape[1], dtype=U.dtype, device=U.device) + V.t().mm(U)
    iQtv = v / d
    iQtv = iQtv - V.mm(torch.linalg.solve(IpVtU.t(), U.t().mm(iQtv)))
    iPv = iQtv - U.mm(torch.linalg.solve(IpVtU, V.t().mm(iQtv)))
    return IpVtU, iQtv, iPv / d


def update(state, v, h, lr_preconditioner, tiny, rng, normalizer="1st"):
    """One step of Q on its Lie group from the pair (v, h) (columns), in place (notes §3.3)."""
    U, V, d = state["U"], state["V"], state["d"]
    # (R3) with probability 0.01 rebalance the norms of U and V (reference behaviour; consumes one CPU draw)
    if rng.uniform() < 0.01 and U.shape[1] > 0:
        rho = torch.sqrt(torch.linalg.vector_norm(U) / torch.linalg.vector_norm(V))
        U.div_(rho)
        V.mul_(rho)
    Qh = _ip_uvt(U, V, d * h)
    Ph = d * _ip_uvt(V, U, Qh)
    IpVtU, iQtv, iPv = _woodbury(U, V, d, v)
    # gradient on the diagonal factor: ∇d = Ph∘h − v∘P⁻¹v; Q ← Q(I − μ diag(∇d)) on the right (notes §3.3)
    nabla_d = Ph * h - v * iPv
    if normalizer == "1st":  # paper: μ = lr_p / max|∇d| (exact spectral norm of a diagonal)
        mu = lr_preconditioner / (torch.max(torch.abs(nabla_d)) + tiny)
    else:  # 2024 '2nd' normaliser (notes §3.3): μ = lr_p · min(1/sqrt(Ph²+v²) · 1/sqrt(h²+(P⁻¹v)²))
        mu = lr_preconditioner * torch.min(torch.rsqrt(Ph * Ph + v * v) * torch.rsqrt(h * h + iPv * iPv))
    d.sub_(mu * d * nabla_d)
    # (R4) update U or V, never both, with a fair coin (reference behaviour; consumes one CPU draw)
    if rng.uniform() < 0.5:
        if U.shape[1] > 0:
            _update_u(U, V, Qh, iQtv, IpVtU, lr_preconditioner, tiny, normalizer)
    elif U.shape[1] > 0:
        _update_v(U, V, Qh, iQtv, lr_preconditioner, tiny, normalizer)


def _update_u(U, V, a, b, IpVtU, lr_p, tiny, normalizer):
    """U ← U − μ ∇U (I + VᵀU), ∇U = (aaᵀ − bbᵀ)V, μ = lr_p/‖∇U Vᵀ‖_F (rank ≤ 2; notes §3.3)."""
    atV = a.t().mm(V)
    atVVt = atV.mm(V.t())
    btV = b.t().mm(V)
    btVVt = btV.mm(V.t())
    if normalizer == "1st":
        # ‖(aaᵀ − bbᵀ)VVᵀ‖_F² expanded; abs() guards sqrt(−0.0) as the reference does
        norm = torch.sqrt(torch.abs((a.t().mm(a)) * (atVVt.mm(atVVt.t()))
                                    + (b.t().mm(b)) * (btVVt.mm(btVVt.t()))
                                    - 2 * (a.t().mm(b)) * (atVVt.mm(btVVt.t()))))
    else:  # 2024 '2nd': ‖a‖‖aᵀVVᵀ‖ + ‖b‖‖bᵀVVᵀ‖
        norm = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(atVVt)
                + torch.linalg.vector_norm(b) * torch.linalg.vector_norm(btVVt))
    mu = lr_p / (norm + tiny)
    _sub_rank_two_(U, mu, a, atV.mm(IpVtU), b, btV.mm(IpVtU))


def _update_v(U, V, a, b, lr_p, tiny, normalizer):
    """V ← V − μ (I + VUᵀ) ∇V, ∇V = (aaᵀ − bbᵀ)U, μ = lr_p/‖U ∇Vᵀ‖_F (notes §3.3)."""
    atU = a.t().mm(U)
    btU = b.t().mm(U)
    UUta = U.mm(atU.t())
    UUtb = U.mm(btU.t())
    if normalizer == "1st":
        norm = torch.sqrt(torch.abs((UUta.t().mm(UUta)) * (a.t().mm(a))
                                    + (UUtb.t().mm(UUtb)) * (b.t().mm(b))
                                    - 2 * (UUta.t().mm(UUtb)) * (a.t().mm(b))))
    else:
        norm = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(UUta)
                + torch.linalg.vector_norm(b) * torch.linalg.vector_norm(UUtb))
    mu = lr_p / (norm + tiny)
    _sub_rank_two_(V, mu, a + V.mm(atU.t()), atU, b + V.mm(btU.t()), btU)


def _sub_rank_two_(M, mu, a, c, b, e, block_rows=1 << 16):
    """M ← M − mu·(a c − b e) in place, for n×1 columns a, b and 1×r rows c, e (the U and V steps above).

    The same values, bit for bit, as the reference's M − mu·(a.mm(c) − b.mm(e)): a product with one term is an
    elementwise multiply, and each element then sees the same subtract, scale and subtract. Done in blocks of rows,
    so that no n×r temporary is allocated (for n in the millions, as E.3's 6.1M weights, that allocation and the
    extra passes over memory were a third of a step on a CPU).
    """
    for start in range(0, M.shape[0], block_rows):
        rows = slice(start, start + block_rows)
        step = a[rows] * c
        step.sub_(b[rows] * e)
        M[rows].sub_(step.mul_(mu))


def dense_q(state):
    """Q = (I + UVᵀ) diag(d) as a dense matrix (for tests and small problems)."""
    U, V, d = state["U"], state["V"], state["d"]
    eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return (eye + U.mm(V.t())) * d.t()


def p_diagonal(state):
    """diag(P) for Q = (I + UVᵀ)D: P_jj = d_j² (1 + 2 U_j·V_j + V_j UᵀU V_jᵀ) (rows U_j, V_j), without forming P."""
    U, V, d = state["U"], state["V"], state["d"][:, 0]
    return d * d * (1 + 2 * (U * V).sum(1) + (V.mm(U.t().mm(U)) * V).sum(1))
