"""Shapes, blocks and matrix roots for Shampoo (baselines_notes.md §2.3, DistributedShampoo semantics)."""

import itertools

import torch

from baselines.eigh import eigh_retrying_in_float64


def merge_small_dims(shape, max_dim):
    """Squeeze size-1 dims, then merge neighbouring dims from the last one backwards while their product stays
    ≤ max_dim (DistributedShampoo `merge_small_dims`): (512, 512, 3, 3) → (512, 512, 9) at 1024 and
    (512, 4608) at 8192; (32, 3, 64, 64) → (96, 4096) at 8192."""
    dims = [d for d in shape if d != 1]
    if not dims:
        return ()
    merged, current = [], dims[-1]
    for d in reversed(dims[:-1]):
        if current * d <= max_dim:
            current *= d
        else:
            merged.append(current)
            current = d
    merged.append(current)
    return tuple(reversed(merged))


def block_slices(merged_shape, max_dim):
    """Every block as a tuple of slices into the merged tensor: each dim split into chunks ≤ max_dim."""
    per_dim = [[slice(start, min(start + max_dim, n)) for start in range(0, n, max_dim)] for n in merged_shape]
    return list(itertools.product(*per_dim))


def mode_gram(block, dim):
    """G_(i) G_(i)ᵀ for the mode-`dim` unfolding of a block."""
    unfolded = block.movedim(dim, 0).reshape(block.shape[dim], -1)
    return unfolded @ unfolded.T


def apply_roots(block, roots):
    """block ×₁ R_1 ×₂ … ×_k R_k with symmetric R_i (each contraction moves the mode last, so after k of them
    the modes are back in order)."""
    out = block
    for root in roots:
        out = torch.tensordot(out, root, dims=([0], [0]))
    return out


def inverse_root(matrix, exponent, epsilon):
    """matrix^(-1/exponent) by eigh with an absolute ε: λ ← λ − min(λ_min, 0) + ε (DistributedShampoo
    matrix_functions, eigh path); in float64 when float32 eigh fails or returns nan (`retry_double_precision`)."""
    eigenvalues, vectors = eigh_retrying_in_float64(matrix)
    eigenvalues = eigenvalues - torch.clamp(eigenvalues.min(), max=0.0) + epsilon
    root = (vectors * eigenvalues.pow(-1.0 / exponent)) @ vectors.T
    return root.to(matrix.dtype)
