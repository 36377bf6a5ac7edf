"""Symmetric eigendecomposition for curvature factors (K-FAC's A and G, Shampoo's L and R)."""

import torch


def eigh_retrying_in_float64(matrix):
    """`torch.linalg.eigh(matrix)`, redone in float64 when a lower-precision one raises or returns non-finite
    values (baselines_notes.md §1.4 "Retry in float64"; DistributedShampoo `retry_double_precision`).

    MKL's float32 eigh can return nan without raising: the G factor of K-FAC on a saturated tanh RNN (entries from
    3e-10 down to denormals, 1e-44) got nan eigenvalues, and the next step's parameters turned nan; in float64 it
    decomposes (tests/baselines/fixtures/kfac_g_factor_eigh_nan.pt). A matrix that is itself non-finite (a gradient
    that overflowed) stays nan either way. Returns (eigenvalues, eigenvectors): in matrix.dtype, or in float64
    when redone, so that a caller can finish its computation (Shampoo's root) in float64 before casting back."""
    if matrix.dtype == torch.float64:
        return torch.linalg.eigh(matrix)
    try:
        eigenvalues, vectors = torch.linalg.eigh(matrix)
        if bool(torch.isfinite(eigenvalues).all() and torch.isfinite(vectors).all()):
            return eigenvalues, vectors
    except RuntimeError:  # did not converge
        pass
    return torch.linalg.eigh(matrix.double())
