"""The grokking transformer against the authors' grok_model.py, written out by hand from its Flax source.

The reference below follows `lqr_optimizer/_src/models/grok_model.py` (SimonDufLab/LLQR d2c62b3) line by line:
scale-only LayerNorm with ε 1e-5, a causal mask of −1e30 before the softmax, flax's default GELU (the tanh
approximation), the flattened sequence read out through a LayerNorm and a Dense layer; and its initialisers:
pos_embedding N(0, 1), embeddings N(0, 1/width), LeCun-normal kernels, zero biases.
"""
import math

import torch

from harness.models import MODELS

INFO = {"vocab_size": 99, "num_classes": 97, "seq_len": 4}


def _layer_norm(x, scale, eps=1e-5):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * scale


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _reference_forward(model, tokens, heads=4, head_dim=32):
    b, n = tokens.shape
    width = model.token.weight.shape[1]
    x = model.token.weight[tokens] * math.sqrt(width) + model.position[:n]
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    for blk in model.blocks:
        h = _layer_norm(x, blk.ln1.weight)
        q, k, v = (h @ blk.attn.qkv.weight.T).reshape(b, n, 3, heads, head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        dots = torch.where(mask, torch.tensor(-1e30, dtype=x.dtype), q @ k.transpose(-1, -2) * head_dim**-0.5)
        out = (torch.softmax(dots, -1) @ v).transpose(1, 2).reshape(b, n, heads * head_dim)
        x = x + out @ blk.attn.out.weight.T + blk.attn.out.bias
        h = _layer_norm(x, blk.ln2.weight)
        x = x + _gelu_tanh(h @ blk.fc1.weight.T + blk.fc1.bias) @ blk.fc2.weight.T + blk.fc2.bias
    return _layer_norm(x.reshape(b, -1), model.ln_f.weight) @ model.head.weight.T + model.head.bias


def test_forward_equals_the_authors_model_written_out():
    torch.manual_seed(0)
    model = MODELS["grokking_transformer"](INFO).double()
    with torch.no_grad():  # non-trivial LayerNorm scales, so that a missing scale would show
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 99, (6, 4))
    torch.testing.assert_close(model(tokens), _reference_forward(model, tokens), rtol=1e-10, atol=1e-10)


def test_initialisation_follows_the_flax_initialisers():
    torch.manual_seed(0)
    model = MODELS["grokking_transformer"](INFO)
    assert abs(float(model.position.std()) - 1.0) < 0.1  # pos_embedding: normal(stddev=1.0)
    assert abs(float(model.token.weight.std()) * math.sqrt(128) - 1.0) < 0.05  # variance_scaling(1, fan_in)
    fc1 = model.blocks[0].fc1
    assert abs(float(fc1.weight.std()) * math.sqrt(fc1.in_features) - 1.0) < 0.05  # lecun_normal
    assert float(fc1.bias.abs().max()) == 0.0
