"""nanoGPT's options for the PSGD authors' fork (nanoGPT-PSGD/model.py at opooladz/Preconditioned-Stochastic-
Gradient-Descent@7a6b914): an untied LM head, PyTorch's default initialisation and the tanh GELU, as the Table 5
presets set them."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.models import build_model
from harness.models.nanogpt import GPT
from tests.harness.helpers import compose_config


def hand_count(vocab, block, n_layer, d):
    """Parameters of the biased, untied model, layer by layer as nanoGPT-PSGD/model.py builds it."""
    layer_norm = 2 * d
    block_params = 2 * layer_norm + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + block * d + n_layer * block_params + layer_norm + vocab * d  # wte, wpe, blocks, ln_f, lm_head


@pytest.mark.parametrize("preset,info", [("table5_owt_50m", {"vocab_size": 50257, "seq_len": 8}),
                                         ("table5_shakespeare_char", {"vocab_size": 65, "seq_len": 128})])
def test_table5_presets_build_the_forks_model(preset, info):
    cfg = compose_config([f"experiment={preset}"]).model
    assert (cfg.bias, cfg.tie_weights, cfg.init, cfg.gelu_approximate) == (True, False, "torch", "tanh")
    with torch.device("meta"):
        model = build_model(cfg, info)
    assert model.lm_head.weight is not model.wte.weight
    names = {name for name, _ in model.named_parameters()}
    assert {"lm_head.weight", "wte.weight"} <= names and "lm_head.bias" not in names
    count = sum(p.numel() for p in model.parameters())
    assert count == hand_count(info["vocab_size"], info["seq_len"], cfg.n_layer, cfg.n_embd)
    if preset == "table5_owt_50m":  # the fork prints 50.96M: its count leaves out lm_head
        assert count - model.lm_head.weight.numel() == 50_955_776


def test_torch_init_keeps_the_layers_defaults():
    torch.manual_seed(0)
    model = GPT(vocab_size=3000, block_size=64, n_layer=2, n_head=4, n_embd=256, bias=True, tie_weights=False,
                init="torch")
    for name, p in model.named_parameters():
        if name.startswith(("wte", "wpe")):  # nn.Embedding: N(0, 1)
            assert abs(p.std().item() - 1.0) < 0.02 and abs(p.mean().item()) < 0.02, name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:  # nn.Linear weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), standard deviation bound/sqrt(3)
            fan_in = dict(model.named_modules())[name.rsplit(".", 1)[0]].in_features
            bound = 1 / math.sqrt(fan_in)
            assert p.abs().max().item() <= bound, name
            if p.numel() > 10_000:
                assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.02, name
    gpt2 = GPT(vocab_size=3000, block_size=64, n_layer=2, n_head=4, n_embd=256, bias=True, tie_weights=False)
    assert abs(gpt2.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001  # the default stays GPT-2's N(0, 0.02)


def test_tanh_gelu_is_the_forks_new_gelu():
    torch.manual_seed(0)
    model = GPT(vocab_size=11, block_size=4, n_layer=1, n_head=2, n_embd=8, gelu_approximate="tanh")
    mlp, x = model.h[0].mlp, torch.randn(3, 8)
    h = mlp.c_fc(x)
    new_gelu = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
    torch.testing.assert_close(mlp(x), mlp.c_proj(new_gelu))


def test_unknown_init_is_refused():
    with pytest.raises(ConfigError, match="model.init='xavier' is invalid"):
        build_model(OmegaConf.create({"name": "nanogpt", "n_layer": 1, "n_head": 1, "n_embd": 4, "init": "xavier"}),
                    {"vocab_size": 5, "seq_len": 4})


def test_unknown_gelu_approximation_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="model.gelu_approximate='tahn' is invalid; choose 'none'"):
        build_model(OmegaConf.create({"name": "nanogpt", "n_layer": 1, "n_head": 1, "n_embd": 4,
                                      "gelu_approximate": "tahn"}), {"vocab_size": 5, "seq_len": 4})
