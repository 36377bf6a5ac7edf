"""Structured inverse preconditioners U_i, one per controlled stage (llqr_spec.md §4.3 [C] `block_structures.py`).

A *block* is one module of the model (one controlled stage, §5 [C]: every Linear, Conv, Embedding and every
norm layer is its own stage) with the parameters it owns directly. Its preconditioner is a dict of *factor*
tensors; each factor is one "leaf" in the authors' sense (the inner loop clips each leaf separately, the EMA
acts on each leaf). Every structure starts at the identity ([C] `block_structure_init: identity`).

Notation: d = the direction a block preconditions (d = −g during a refit, g when training), Γ = ∂J/∂u
reshaped like d. A weight tensor W of shape (m, ...) is read as the matrix X = W.reshape(m, n).

| structure  | u = U·d                                   | factors (leaves)                          | pull-back ∂J/∂φ                 |
|------------|-------------------------------------------|-------------------------------------------|---------------------------------|
| diagonal   | φ ⊙ d over all the block's entries          | one vector ``diag`` per block [C]          | Γ ⊙ d                            |
| scalar     | φ·d, one scalar per block                   | ``scalar`` (1,)                            | ⟨Γ, d⟩                           |
| dense      | Φ·vec(d), Φ ∈ ℝ^{P×P} (tiny problems)        | ``dense``                                  | Γ dᵀ                             |
| kfac       | weights: A X Bᵀ; 1-D params: diagonal      | ``<p>.rows`` (m×m), ``<p>.cols`` (n×n), ``<p>.diag`` | ∂A = Γ B Xᵀ, ∂B = Γᵀ A X  |
| e-kfac     | weights: Q_r [D ⊙ (Q_rᵀ X Q_c)] Q_cᵀ, Q's free | ``<p>.qrows``, ``<p>.qcols``, ``<p>.d`` (m×n), ``<p>.diag`` | see `_ekfac_pullback` |

Layout [C → PyTorch]: the authors' Flax kernel is X_flax = (fan_in, fan_out) with U·X_flax = L X_flax Rᵀ.
A torch ``nn.Linear.weight`` is W = X_flaxᵀ (out, in), so U·W = R W Lᵀ: our ``rows`` is their ``R_fanout``
and our ``cols`` their ``L_fanin``. For e-kfac, ``qrows`` = Q_G_fanout, ``qcols`` = Q_A_fanin and our
``d`` (out, in) = D_flat.reshape(in, out)ᵀ. Conv weights (out, in, kh, kw) become (out, in·kh·kw) (the
authors order fan-in as (kh, kw, in); from the identity this is only a relabelling). Embedding weights
(vocab, dim) keep their torch layout (rows = vocab). Biases and norm scales/shifts (1-D) are diagonal in
every structure [C]. A weight with a side longer than ``max_factor_dim`` is preconditioned diagonally
([E]; the authors' `e-kfac-gpt` makes such vocab-side factors diagonal).
"""
from __future__ import annotations

import abc

import torch

STRUCTURES = ("diagonal", "scalar", "kfac", "e-kfac", "dense")


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(flat: torch.Tensor, like) -> list[torch.Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


class BlockStructure(abc.ABC):
    """The preconditioner of one block: identity init, apply (U·d) and pull-back ((∂u/∂φ)ᵀ Γ)."""

    kind = ""
    positive = False  # [C] diagonal and scalar U are clipped to ≥ 1e-8 after each refit

    def __init__(self, names: list[str], shapes: list[torch.Size]):
        self.names, self.shapes = list(names), [torch.Size(s) for s in shapes]

    @abc.abstractmethod
    def identity(self, device, dtype) -> dict[str, torch.Tensor]:
        """Implemented by each structure."""

    @abc.abstractmethod
    def apply(self, factors: dict, vecs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Implemented by each structure."""

    @abc.abstractmethod
    def pullback(self, factors: dict, vecs: list[torch.Tensor], cotangents: list[torch.Tensor]) -> dict:
        """Implemented by each structure."""

    def describe(self) -> str:
        return self.kind


class Diagonal(BlockStructure):
    """u = φ ⊙ d, one vector over every entry of the block (one leaf per layer) [C] `DiagonalBlock`."""

    kind, positive = "diagonal", True

    def identity(self, device, dtype):
        return {"diag": torch.ones(sum(s.numel() for s in self.shapes), device=device, dtype=dtype)}

    def apply(self, factors, vecs):
        return _split(factors["diag"] * _flat(vecs), vecs)

    def pullback(self, factors, vecs, cotangents):
        return {"diag": _flat(cotangents) * _flat(vecs)}


class Scalar(BlockStructure):
    """u = φ·d with one scalar per block [C] `ScalarBlock`."""

    kind, positive = "scalar", True

    def identity(self, device, dtype):
        return {"scalar": torch.ones(1, device=device, dtype=dtype)}

    def apply(self, factors, vecs):
        return [factors["scalar"] * v for v in vecs]

    def pullback(self, factors, vecs, cotangents):
        return {"scalar": torch.dot(_flat(cotangents), _flat(vecs)).reshape(1)}


class Dense(BlockStructure):
    """u = Φ·vec(d), Φ ∈ ℝ^{P×P} for the whole block (tiny problems only) [C] `DenseBlock`."""

    kind = "dense"

    def identity(self, device, dtype):
        n = sum(s.numel() for s in self.shapes)
        return {"dense": torch.eye(n, device=device, dtype=dtype)}

    def apply(self, factors, vecs):
        return _split(factors["dense"] @ _flat(vecs), vecs)

    def pullback(self, factors, vecs, cotangents):
        return {"dense": torch.outer(_flat(cotangents), _flat(vecs))}


class _PerParameter(BlockStructure):
    """Kronecker-type structures: each weight gets matrix factors, each 1-D parameter a diagonal [C]."""

    def __init__(self, names, shapes, max_factor_dim: int = 4096):
        super().__init__(names, shapes)
        self.matrix = [len(s) >= 2 and s[0] <= max_factor_dim and s[1:].numel() <= max_factor_dim
                       for s in self.shapes]

    def identity(self, device, dtype):
        factors = {}
        for name, shape, is_matrix in zip(self.names, self.shapes, self.matrix):
            if is_matrix:
                factors.update(self._matrix_identity(name, shape[0], shape[1:].numel(), device, dtype))
            else:
                factors[f"{name}.diag"] = torch.ones(shape.numel(), device=device, dtype=dtype)
        return factors

    def apply(self, factors, vecs):
        out = []
        for name, v, is_matrix in zip(self.names, vecs, self.matrix):
            if is_matrix:
                out.append(self._matrix_apply(factors, name, _matrix(v)).view_as(v))
            else:
                out.append((factors[f"{name}.diag"] * v.reshape(-1)).view_as(v))
        return out

    def pullback(self, factors, vecs, cotangents):
        grads = {}
        for name, v, c, is_matrix in zip(self.names, vecs, cotangents, self.matrix):
            if is_matrix:
                grads.update(self._matrix_pullback(factors, name, _matrix(v), _matrix(c)))
            else:
                grads[f"{name}.diag"] = c.reshape(-1) * v.reshape(-1)
        return grads

    def describe(self):
        parts = [f"{n}:{self.kind if m else 'diagonal'}" for n, m in zip(self.names, self.matrix)]
        return ", ".join(parts)


class Kronecker(_PerParameter):
    """u = A X Bᵀ (A over rows, B over columns) [C] `KroneckerBlock`; ∂A = Γ B Xᵀ, ∂B = Γᵀ A X."""

    kind = "kfac"

    def _matrix_identity(self, name, m, n, device, dtype):
        return {f"{name}.rows": torch.eye(m, device=device, dtype=dtype),
                f"{name}.cols": torch.eye(n, device=device, dtype=dtype)}

    def _matrix_apply(self, factors, name, x):
        return factors[f"{name}.rows"] @ x @ factors[f"{name}.cols"].T

    def _matrix_pullback(self, factors, name, x, gamma):
        a, b = factors[f"{name}.rows"], factors[f"{name}.cols"]
        return {f"{name}.rows": gamma @ b @ x.T, f"{name}.cols": gamma.T @ a @ x}


class EKFAC(_PerParameter):
    """u = Q_r [D ⊙ (Q_rᵀ X Q_c)] Q_cᵀ with free (not orthogonal) Q's [C] `EKFACBlock`."""

    kind = "e-kfac"

    def _matrix_identity(self, name, m, n, device, dtype):
        return {f"{name}.qrows": torch.eye(m, device=device, dtype=dtype),
                f"{name}.qcols": torch.eye(n, device=device, dtype=dtype),
                f"{name}.d": torch.ones(m, n, device=device, dtype=dtype)}

    def _matrix_apply(self, factors, name, x):
        qr, qc, d = factors[f"{name}.qrows"], factors[f"{name}.qcols"], factors[f"{name}.d"]
        return qr @ (d * (qr.T @ x @ qc)) @ qc.T

    def _matrix_pullback(self, factors, name, x, gamma):
        # X̂ = Q_rᵀXQ_c, Ĝ = Q_rᵀΓQ_c, Z = D⊙X̂ (spec §4.3 table, e-kfac row) [C]
        qr, qc, d = factors[f"{name}.qrows"], factors[f"{name}.qcols"], factors[f"{name}.d"]
        x_r, g_r, x_c, g_c = qr.T @ x, qr.T @ gamma, x @ qc, gamma @ qc  # each product once: 10 matmuls, not 12
        x_hat, g_hat = x_r @ qc, g_r @ qc
        z, dg = d * x_hat, d * g_hat
        return {f"{name}.qrows": g_c @ z.T + x_c @ dg.T,
                f"{name}.qcols": g_r.T @ z + x_r.T @ dg,
                f"{name}.d": g_hat * x_hat}


def make_structure(kind: str, names, shapes, max_factor_dim: int = 4096) -> BlockStructure:
    """The structure ``kind`` (one of STRUCTURES) for a block with parameters ``names`` of ``shapes``."""
    if kind == "diagonal":
        return Diagonal(names, shapes)
    if kind == "scalar":
        return Scalar(names, shapes)
    if kind == "dense":
        return Dense(names, shapes)
    if kind == "kfac":
        return Kronecker(names, shapes, max_factor_dim)
    if kind == "e-kfac":
        return EKFAC(names, shapes, max_factor_dim)
    raise ValueError(f"Invalid block_structure: {kind}. Must be one of {STRUCTURES}.")
