"""Dense Newton preconditioner: Q upper triangular n×n, P = QᵀQ (small problems only: O(n²) memory).

psgd_notes.md §3.4 (reference `update_precond_newton_math_`, class `Newton` @ f0fa983); paper §2 and App. D.
"""

import torch


def init_state(n, init_scale, dtype, device):
    return {"Q": torch.eye(n, dtype=dtype, device=device) * init_scale}


def update(state, v, h, lr_preconditioner, tiny, normalizer="1st"):
    """Q ← Q − μ (G Q), G = triu(aaᵀ − bbᵀ), a = Qh, b = Q⁻ᵀv (columns), in place (notes §3.4)."""
    Q = state["Q"]
    a = Q.mm(h)
    b = torch.linalg.solve_triangular(Q.t(), v, upper=False)
    grad = torch.triu(a.mm(a.t()) - b.mm(b.t()))
    if normalizer == "1st":  # paper: μ = lr_p / max|G_ij| (a lower bound of ‖G‖₂)
        mu = lr_preconditioner / (grad.abs().max() + tiny)
    else:  # '2nd' (our form of the 2024 idea): μ = lr_p / ‖aaᵀ + bbᵀ‖₂, exact from the 2×2 Gram matrix
        gram = torch.cat([a, b], 1).t().mm(torch.cat([a, b], 1))
        mu = lr_preconditioner / (torch.linalg.eigvalsh(gram).max() + tiny)
    Q.sub_(mu * grad.mm(Q))  # reference order: μ·(G@Q), not (μG)@Q (notes §5.2 item 5)


def precondition(state, g):
    """P g = Qᵀ (Q g) for a vector or column g (the reference applies it to the 1-D gradient)."""
    Q = state["Q"]
    return Q.t() @ (Q @ g)


def dense_q(state):
    return state["Q"]


def p_diagonal(state):
    """diag(QᵀQ): the squared column norms of Q."""
    return (state["Q"] * state["Q"]).sum(0)
