"""configs/optimizer/psgd_*.yaml build PSGD through the training loop's protocol and train with its closure."""

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.protocol import LossClosure, build_optimizer, loss_function
from psgd import PRECONDITIONERS, PSGD

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optimizer"


@pytest.mark.parametrize("kind", PRECONDITIONERS)
def test_config_keys_are_the_constructor_arguments_with_their_defaults(kind):
    cfg = OmegaConf.load(CONFIGS / f"psgd_{kind}.yaml")
    signature = inspect.signature(PSGD.__init__).parameters
    keys = {k for k in cfg if not k.startswith("_")}
    assert keys == set(signature) - {"self", "params", "model"}  # the loop passes `model` itself
    for key in keys - {"preconditioner", "rng_seed", "rank"}:
        assert cfg[key] == signature[key].default, key


@pytest.mark.parametrize("kind", PRECONDITIONERS)
@pytest.mark.parametrize("exact", [True, False])
def test_config_trains_through_the_protocol(kind, exact):
    root = OmegaConf.create({"seed": 3, "optimizer": OmegaConf.load(CONFIGS / f"psgd_{kind}.yaml")})
    root.optimizer.exact_hessian_vector_product = exact
    root.optimizer.lr = 0.2
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    opt = build_optimizer(root.optimizer, model, "cross_entropy", None)
    assert isinstance(opt, PSGD) and opt.param_groups[0]["preconditioner"] == kind
    if kind == "kron":  # the loop passed the model: each Linear's bias is folded into its weight's block
        assert opt.param_groups[0]["kron_blocks"] == [[0, 1], [2, 3]]
    losses = []
    for _ in range(30):
        closure = LossClosure(model, x, y, loss_function("cross_entropy"))
        losses.append(opt.step(closure).item())
    assert losses[-1] < losses[0]
