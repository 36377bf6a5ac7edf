"""Kronecker-product (affine) preconditioner of Li 2019 (arXiv:1809.10232), one per weight matrix.

A block is a parameter viewed as a matrix (first dimension by the product of the others: a conv kernel
(out, in, k, k) becomes (out, in·k·k); vectors and scalars become (1, n)), optionally with its layer's bias
appended as a last column ("bias folded in", Li's affine demos put it as a last row of the transposed matrix).
P = kron(QrᵀQr, QlᵀQl), so P·vec(G) = vec(QlᵀQl G QrᵀQr) (psgd_notes.md §3.5, reference `update_precond_kron`,
`precond_grad_kron` @ f0fa983). Each factor has one of the reference's formats:
  "dense"  upper triangular (m, m);
  "diag"   the reference's "scaling" format, a vector (m,);
  "norm"   the "normalization" format, (2, m): diagonal q[0] plus a last column q[1] (q[1, -1] = 0) — the
           affine, BatchNorm-like group for a side whose last entry is a folded bias.
Choice (ours; the reference leaves it to the user): a side of size ≤ max_dense_size is dense when the block is a
matrix; a larger side is "norm" when it carries a folded bias, else "diag"; vectors and scalars are diagonal.
"""

import torch


def block_matrix(tensors, has_bias):
    """The block's matrix from (weight-shaped tensor[, bias-shaped tensor]): bias appended as the last column."""
    w = tensors[0]
    m = w.reshape(w.shape[0], -1) if w.dim() >= 2 else w.reshape(1, -1)
    return torch.cat([m, tensors[1].reshape(-1, 1)], 1) if has_bias else m


def split_block(matrix, params, has_bias):
    """Inverse of block_matrix: per-parameter tensors shaped like the parameters."""
    if has_bias:
        return [matrix[:, :-1].reshape(params[0].shape), matrix[:, -1].reshape(params[1].shape)]
    return [matrix.reshape(params[0].shape)]


def _kind(size, is_matrix, carries_bias, max_dense_size):
    if is_matrix and size <= max_dense_size:
        return "dense"
    return "norm" if carries_bias and size > 1 else "diag"


def init_state(params, has_bias, init_scale, max_dense_size, dtype):
    """Ql, Qr = sqrt(init_scale)·I each (so kron(Qr, Ql) = init_scale·I), with their formats."""
    w = params[0]
    is_matrix = w.dim() >= 2
    rows = w.shape[0] if is_matrix else 1
    cols = w.numel() // rows + (1 if has_bias else 0)
    root = init_scale ** 0.5
    state = {}
    for name, size, carries_bias in (("Ql", rows, False), ("Qr", cols, has_bias)):
        kind = _kind(size, is_matrix, carries_bias, max_dense_size)
        if kind == "dense":
            q = torch.eye(size, dtype=dtype, device=w.device) * root
        elif kind == "diag":
            q = torch.ones(size, dtype=dtype, device=w.device) * root
        else:
            q = torch.zeros(2, size, dtype=dtype, device=w.device)
            q[0] = root
        state[name], state[name + "_kind"] = q, kind
    return state


# ------------------------------------------------------------------------------------------------------------
# left actions of a factor on a matrix X (m, k); right actions through transposes


def _left(q, kind, X):
    """Q X."""
    if kind == "dense":
        return q.mm(X)
    if kind == "diag":
        return q[:, None] * X
    return q[0][:, None] * X + q[1][:, None] * X[-1:]  # diag(q0) X + q1 (last row of X)


def _left_t(q, kind, X):
    """Qᵀ X."""
    if kind == "dense":
        return q.t().mm(X)
    if kind == "diag":
        return q[:, None] * X
    out = q[0][:, None] * X
    out[-1:] += q[1][None, :].mm(X)  # Qᵀ = diag(q0) + e_last q1ᵀ
    return out


def _left_inv_t(q, kind, X):
    """Q⁻ᵀ X."""
    if kind == "dense":
        return torch.linalg.solve_triangular(q.t(), X, upper=False)
    if kind == "diag":
        return X / q[:, None]
    out = X / q[0][:, None]
    out[-1:] -= (q[1] / (q[0] * q[0][-1]))[None, :].mm(X)  # the last row solves q0[-1]y + q1ᵀy_rest = x
    return out


def _max_diag(q, kind):
    return torch.max(torch.diag(q)) if kind == "dense" else torch.max(q if kind == "diag" else q[0])


def _gradient(kind, M, N):
    """MMᵀ − NNᵀ projected on the factor's Lie algebra (triu / diagonal / diagonal plus last column)."""
    if kind == "dense":
        return torch.triu(M.mm(M.t()) - N.mm(N.t()))
    diag = torch.sum(M * M, dim=1) - torch.sum(N * N, dim=1)
    if kind == "diag":
        return diag
    bias = M[:-1].mm(M[-1:].t()) - N[:-1].mm(N[-1:].t())
    return torch.stack([diag, torch.cat([bias.reshape(-1), bias.new_zeros(1)])])


def _second_order_norm(kind, M, N):
    """'2nd' normaliser (later versions, our form): the largest row 2-norm of MMᵀ + NNᵀ, a lower bound of its
    spectral norm (for diagonal-type factors its largest diagonal entry)."""
    if kind == "dense":
        return torch.linalg.vector_norm(M.mm(M.t()) + N.mm(N.t()), dim=1).max()
    return torch.max(torch.sum(M * M, dim=1) + torch.sum(N * N, dim=1))


def _step(q, kind, grad, mu):
    """Q ← Q − μ G Q on the factor's group."""
    if kind == "dense":
        q.sub_(mu * grad.mm(q))
    elif kind == "diag":
        q.sub_(mu * grad * q)
    else:
        last = q[0, -1].clone()
        q[1].sub_(mu * (grad[0] * q[1] + last * grad[1]))
        q[0].sub_(mu * grad[0] * q[0])


def update(state, dX, dG, lr_preconditioner, tiny, normalizer="1st"):
    """One step of (Ql, Qr) from the block matrices (dX, dG) = (v, Hv), in place (notes §3.5)."""
    Ql, Qr, kl, kr = state["Ql"], state["Qr"], state["Ql_kind"], state["Qr_kind"]
    # keep the two factors at a similar dynamic range (reference: balance on every call)
    rho = torch.sqrt(_max_diag(Ql, kl) / _max_diag(Qr, kr))
    Ql.div_(rho)
    Qr.mul_(rho)
    A = _left(Qr, kr, _left(Ql, kl, dG).t()).t()  # Ql dG Qrᵀ
    Bt = _left_inv_t(Ql, kl, _left_inv_t(Qr, kr, dX.t()).t())  # Ql⁻ᵀ dX Qr⁻¹
    grad1, grad2 = _gradient(kl, A, Bt), _gradient(kr, A.t(), Bt.t())
    if normalizer == "1st":  # paper era: μ = lr_p / max|G|
        mu1 = lr_preconditioner / (torch.max(torch.abs(grad1)) + tiny)
        mu2 = lr_preconditioner / (torch.max(torch.abs(grad2)) + tiny)
    else:
        mu1 = lr_preconditioner / (_second_order_norm(kl, A, Bt) + tiny)
        mu2 = lr_preconditioner / (_second_order_norm(kr, A.t(), Bt.t()) + tiny)
    _step(Ql, kl, grad1, mu1)
    _step(Qr, kr, grad2, mu2)


def precondition(state, G):
    """QlᵀQl G QrᵀQr (reference `precond_grad_kron`)."""
    Ql, Qr, kl, kr = state["Ql"], state["Qr"], state["Ql_kind"], state["Qr_kind"]
    left = _left_t(Ql, kl, _left(Ql, kl, G))
    return _left_t(Qr, kr, _left(Qr, kr, left.t())).t()


def dense_factor(q, kind):
    if kind == "dense":
        return q
    if kind == "diag":
        return torch.diag(q)
    out = torch.diag(q[0])
    out[:-1, -1] = q[1, :-1]
    return out


def dense_q(state):
    """kron(Qr, Ql) as a dense matrix acting on vec(block) in column-major order (for tests)."""
    return torch.kron(dense_factor(state["Qr"], state["Qr_kind"]), dense_factor(state["Ql"], state["Ql_kind"]))


def _factor_p_diagonal(q, kind):
    """diag(qᵀq) of one factor in its format, without forming a dense matrix for "diag" and "norm"."""
    if kind == "dense":
        return (q * q).sum(0)
    if kind == "diag":
        return q * q
    out = q[0] * q[0]
    out[-1] += (q[1, :-1] * q[1, :-1]).sum()  # the last column holds q[1] above the diagonal
    return out


def p_diagonal(state):
    """diag(P) of P = kron(QrᵀQr, QlᵀQl), shaped like the block matrix: entry (i, j) is (QlᵀQl)_ii (QrᵀQr)_jj."""
    left = _factor_p_diagonal(state["Ql"], state["Ql_kind"])
    right = _factor_p_diagonal(state["Qr"], state["Qr_kind"])
    return torch.outer(left, right)
