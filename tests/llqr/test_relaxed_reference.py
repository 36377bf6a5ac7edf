"""LLQR refits against the authors' JAX code (SimonDufLab/LLQR @ d2c62b3), float64.

Reference numbers: ../shared/reference/llqr_jax_reference (README §3 lists the conventions matched here:
batch-sum Fisher for ngd, per-leaf clip 5, SGD-momentum 0.9, 50 inner steps, lr 1e-3, diag clip ≥ 1e-8).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from llqr import LLQR

REF = Path(__file__).resolve().parents[3] / "shared" / "reference" / "llqr_jax_reference"
LAYERS = {"0": "layers_0", "2": "layers_2", "4": "layers_4"}

pytestmark = pytest.mark.skipif(not (REF / "f64").is_dir(), reason="LLQR JAX reference numbers not available")


def _problem():
    prob = np.load(REF / "problem.npz")
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for idx, name in LAYERS.items():
            # Flax kernel (in, out), y = x @ kernel + bias; torch weight = kernelᵀ (README §2)
            model[int(idx)].weight.copy_(torch.from_numpy(prob[f"params/{name}/Dense_0/kernel"].T.astype(np.float64)))
            model[int(idx)].bias.copy_(torch.from_numpy(prob[f"params/{name}/Dense_0/bias"].astype(np.float64)))
    x = torch.from_numpy(prob["x_flat"].astype(np.float64))
    y = torch.from_numpy(prob["y"].astype(np.int64))
    return model, x, y


def _ref_factors(ref, prefix, structure, layer, out_dim, in_dim):
    """The reference's factors of one layer, in our layout (structures.py module docstring)."""
    if structure == "diagonal":
        flat = ref[f"{prefix}/{layer}/diag_flat"]  # [bias, kernel (in, out) row-major]
        kernel = flat[out_dim:].reshape(in_dim, out_dim)
        return {"diag": np.concatenate([kernel.T.reshape(-1), flat[:out_dim]])}
    base = f"{prefix}/{layer}/Dense_0"
    out = {"bias.diag": ref[f"{base}/bias/diag"]}
    if structure == "kfac":
        out["weight.rows"] = ref[f"{base}/kernel/R_fanout"]
        out["weight.cols"] = ref[f"{base}/kernel/L_fanin"]
    else:
        out["weight.qrows"] = ref[f"{base}/kernel/Q_G_fanout"]
        out["weight.qcols"] = ref[f"{base}/kernel/Q_A_fanin"]
        out["weight.d"] = ref[f"{base}/kernel/D_flat"].reshape(in_dim, out_dim).T
    return out


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def test_gradient_matches_reference():
    model, x, y = _problem()
    base = np.load(REF / "f64" / "base.npz")
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for idx, name in LAYERS.items():
        assert _rel(model[int(idx)].weight.grad.numpy(), base[f"grad/{name}/Dense_0/kernel"].T) < 1e-6
        assert _rel(model[int(idx)].bias.grad.numpy(), base[f"grad/{name}/Dense_0/bias"]) < 1e-6


@pytest.mark.parametrize("divergence", ["ngd", "newton"])
@pytest.mark.parametrize("structure", ["diagonal", "kfac", "e-kfac"])
def test_refit_reproduces_authors_code(divergence, structure):
    model, x, y = _problem()
    ref = np.load(REF / "f64" / f"refit_split_{divergence}_{structure}_lr1e-3.npz")
    opt = LLQR(model.parameters(), model=model, divergence=divergence, block_structure=structure, precond_lr=1e-3,
               precond_steps=50, precond_clip=5.0, ema_decay=0.0, damping=0.0, verbose=False)
    record = opt.refit(x, y, record=True)

    # J trajectory: J(U_k), k = 0..50, before the diag clip
    assert _rel(record["J"], ref["J_traj"]) < 1e-10

    # U_final, factor by factor (after the ≥ 1e-8 clip for diagonal)
    for block, factors in zip(opt._blocks, opt.preconditioner_factors()):
        lin = model[int(block.name)]
        want = _ref_factors(ref, "U_final", structure, LAYERS[block.name], lin.out_features, lin.in_features)
        assert set(want) == set(factors)
        for key, value in want.items():
            assert _rel(factors[key].numpy(), value) < 1e-10, (block.name, key)

    # U·g on the refit batch's gradient
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    ug = opt.precondition([p.grad for p in model.parameters()])
    mine = {}
    for (name, _), value in zip(model.named_parameters(), ug):
        mine[name] = value.numpy()
    for idx, layer in LAYERS.items():
        assert _rel(mine[f"{idx}.weight"], ref[f"Ug/{layer}/Dense_0/kernel"].T) < 1e-10
        assert _rel(mine[f"{idx}.bias"], ref[f"Ug/{layer}/Dense_0/bias"]) < 1e-10
