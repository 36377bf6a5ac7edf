"""Every baseline optimizer config builds the way the harness builds it (hydra instantiate with the protocol
keywords its constructor accepts), names only constructor arguments, and trains a step through the closure."""

import inspect
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from tests.baselines.helpers import SmallCNN, protocol_closure

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "optimizer"
NAMES = ["kfac", "shampoo", "adabelief", "adan", "adahessian", "radam", "yogi", "adabound", "padam"]


@pytest.mark.parametrize("name", NAMES)
def test_config_instantiates_and_steps(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    target = hydra.utils.get_class(cfg._target_)
    accepted = inspect.signature(target.__init__).parameters
    assert all(key in accepted for key in cfg if not key.startswith("_")), "a key is not a constructor argument"
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    extras = {"model": model, "loss": "cross_entropy"}
    extras = {k: v for k, v in extras.items() if k in accepted}
    if name == "kfac":
        extras["verbose"] = False
    opt = hydra.utils.instantiate(cfg, model.parameters(), **extras, _convert_="all")
    before = [p.detach().clone() for p in model.parameters()]
    closure = protocol_closure(model, x, y)
    losses = [opt.step(closure) for _ in range(2)]
    assert all(torch.is_tensor(loss) and torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
