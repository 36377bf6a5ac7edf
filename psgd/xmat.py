"""X-shape preconditioner ("XMat"): Q = diag(a) + adiag(b) on the concatenation of all parameters.

psgd_notes.md §3.2 (reference `update_precond_Xmat_math_` / `precond_grad_Xmat_math` @ f0fa983); paper §3.2,
Theorem 3.1 with the group {identity, flip}. Entry i couples with entry n−1−i of the flattened vector
(first layer with last layer), so results depend on the parameter order (notes §8 pitfall 5).
"""

import torch


def init_state(n, init_scale, dtype, device):
    """a = init_scale, b = 0 (reference constructor)."""
    return {"a": torch.ones(n, dtype=dtype, device=device) * init_scale, "b": torch.zeros(n, dtype=dtype, device=device)}


def _flip(x):
    return torch.flip(x, [0])


def update(state, v, h, lr_preconditioner, tiny, normalizer="1st"):
    """Q ← Q − μ G Q on the X group from (v, h) (1-D), in place (notes §3.2)."""
    a, b = state["a"], state["b"]
    Qh = a * h + b * _flip(h)
    a_flip, b_flip = _flip(a), _flip(b)
    # Q⁻ᵀv in closed form; needs a∘flip(a) − b∘flip(b) ≠ 0 (invertibility of Q)
    iQtv = (a_flip * v - b_flip * _flip(v)) / (a * a_flip - b * b_flip)
    nabla_a = Qh * Qh - iQtv * iQtv
    nabla_b = Qh * _flip(Qh) - iQtv * _flip(iQtv)
    half, odd = divmod(len(nabla_b), 2)
    if odd:  # the middle anti-diagonal entry is the diagonal one; keep b there at 0
        nabla_b[half] = 0
    if normalizer == "1st":  # paper: μ = lr_p / max(max|∇a|, max|∇b|)
        mu = lr_preconditioner / (torch.maximum(torch.max(torch.abs(nabla_a)), torch.max(torch.abs(nabla_b))) + tiny)
    else:  # 2024 '2nd' normaliser: μ = lr_p / max(Qh² + (Q⁻ᵀv)²)
        mu = lr_preconditioner / (torch.max(Qh * Qh + iQtv * iQtv) + tiny)
    a.sub_(mu * (nabla_a * a + nabla_b * b_flip))
    b.sub_(mu * (nabla_a * b + nabla_b * a_flip))


def precondition(state, g, cache=None):
    """P g = (a² + flip(b²)) g + (ab + flip(ab)) flip(g) (reference `precond_grad_Xmat_math`).

    With a `Coefficients` cache the two diagonals are formed only when a or b changed since the last call: the
    same operations on the same values as the reference, so the same bits, in 4 elementwise passes instead of 10."""
    diagonal, anti_diagonal = cache.get(state) if cache is not None else coefficients(state["a"], state["b"])
    return diagonal * g + anti_diagonal * _flip(g)


def coefficients(a, b):
    """The diagonals (a² + flip(b²), ab + flip(ab)) of P = QᵀQ in P g = d₁ g + d₂ flip(g)."""
    ab = a * b
    return a * a + _flip(b * b), ab + _flip(ab)


def p_diagonal(state):
    """The diagonal of P = QᵀQ: a² + flip(b²), plus the anti-diagonal term where they cross (odd n's middle)."""
    diagonal, anti_diagonal = coefficients(state["a"], state["b"])
    half, odd = divmod(len(diagonal), 2)
    if odd:
        diagonal = diagonal.clone()
        diagonal[half] += anti_diagonal[half]
    return diagonal


class Coefficients:
    """`coefficients` of a state's (a, b), recomputed only when either tensor was replaced or changed in place
    (tracked by identity and torch's version counter); kept outside the state_dict."""

    def __init__(self):
        self._key, self._value = None, None

    def get(self, state):
        a, b = state["a"], state["b"]
        key = _key(a, b)
        stale = (key is None or self._key is None or key[0] is not self._key[0] or key[1] is not self._key[1]
                 or key[2:] != self._key[2:])
        if stale:
            self._key, self._value = key, coefficients(a, b)
        return self._value


def _key(a, b):
    try:
        return a, b, a._version, b._version
    except RuntimeError:  # inference tensors have no version counter: never cache
        return None


def dense_q(state):
    """Q = diag(a) + adiag(b) as a dense matrix (the middle entry of an odd n is a + b on the diagonal)."""
    a, b = state["a"], state["b"]
    return torch.diag(a) + torch.flip(torch.diag(b), [1])
