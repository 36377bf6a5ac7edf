"""The float64 retry of the curvature factors' eigendecomposition (baselines/eigh.py), checked against float64
eigh of the same matrix and against the matrix itself."""

from pathlib import Path

import pytest
import torch

from baselines.eigh import eigh_retrying_in_float64
from baselines.kfac_layers import symmetric_eigh
from baselines.shampoo_blocks import inverse_root

FIXTURE = Path(__file__).parent / "fixtures" / "kfac_g_factor_eigh_nan.pt"


def _float32_eigh_returning_nan(monkeypatch, raise_instead=False):
    real_eigh = torch.linalg.eigh

    def eigh(matrix):
        if matrix.dtype == torch.float32:
            if raise_instead:
                raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
            d, q = real_eigh(matrix)
            return d.fill_(float("nan")), q
        return real_eigh(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", eigh)


def test_the_recorded_k_fac_factor_decomposes_as_in_float64():
    # K-FAC's G of the 30-unit tanh RNN at step 2,050 of `experiment=table8_xor_rnn optimizer=kfac seed=0` (length
    # 32), whose float32 eigh gave nan eigenvalues on MKL without raising (the run's loss turned nan at step 2,051).
    g = torch.load(FIXTURE)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    d, q = symmetric_eigh(g)  # eigenvalues clamped at 0: the reference's (of a PSD matrix) are within 1e-17 of it
    assert d.dtype == q.dtype == torch.float32
    assert torch.isfinite(d).all() and torch.isfinite(q).all()
    reference = torch.linalg.eigvalsh(g.double())
    torch.testing.assert_close(d.double(), reference, rtol=0.0, atol=1e-6 * float(reference.abs().max()))
    torch.testing.assert_close((q * d) @ q.T, g, rtol=0.0, atol=1e-6 * float(g.abs().max()))


@pytest.mark.parametrize("raise_instead", [False, True])
def test_a_failed_float32_eigh_is_redone_in_float64(monkeypatch, raise_instead):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    matrix = x @ x.T + 0.1 * torch.eye(7)
    expected_d, expected_q = torch.linalg.eigh(matrix.double())
    _float32_eigh_returning_nan(monkeypatch, raise_instead)
    d, q = symmetric_eigh(matrix)
    torch.testing.assert_close(d, expected_d.float())
    torch.testing.assert_close((q * d) @ q.T, matrix, atol=1e-5, rtol=0.0)
    root = inverse_root(matrix, exponent=4, epsilon=1e-6)
    expected_root = (expected_q * (expected_d + 1e-6).pow(-0.25)) @ expected_q.T
    torch.testing.assert_close(root, expected_root.float(), atol=1e-5, rtol=1e-5)


def test_a_non_finite_matrix_gives_nan_without_raising():
    matrix = torch.eye(4)
    matrix[1, 2] = matrix[2, 1] = float("inf")  # a factor built from a gradient that overflowed
    d, q = eigh_retrying_in_float64(matrix)
    assert not torch.isfinite(d).all()
