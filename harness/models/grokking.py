"""The grokking transformer of the LLQR code (`lqr_optimizer/_src/models/grok_model.py`; llqr_spec.md §8 item 2).

Token embedding × sqrt(width) plus a learned position table (`max_len` 5, initialised N(0, 1) as the authors'
`pos_embedding`: positions weigh as much as tokens at start); `n_layers` pre-LayerNorm blocks (LayerNorm with scale
only, ε 1e-5 as their `LayerNorm` wrapper; causal attention with a fused q/k/v projection without bias, `n_heads`
heads of `head_dim`, an output projection with bias; an MLP with Flax's default GELU, the tanh approximation); then
the whole sequence flattened, a LayerNorm and a Linear read-out over the p answers. Preset: 2 layers, width 128,
4 heads of 32, MLP 512. Initialisation as Flax's defaults (LeCun-normal kernels, zero biases, embeddings
N(0, 1/width)).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model


def _layer_norm(width):
    return nn.LayerNorm(width, eps=1e-5, bias=False)


class GrokkingAttention(nn.Module):
    def __init__(self, width, n_heads, head_dim):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.qkv = nn.Linear(width, 3 * n_heads * head_dim, bias=False)
        self.out = nn.Linear(n_heads * head_dim, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class GrokkingBlock(nn.Module):
    def __init__(self, width, n_heads, head_dim, mlp_dim):
        super().__init__()
        self.ln1, self.ln2 = _layer_norm(width), _layer_norm(width)
        self.attn = GrokkingAttention(width, n_heads, head_dim)
        self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))  # flax nn.gelu's default


class GrokkingTransformer(nn.Module):
    def __init__(self, vocab_size, num_classes, seq_len, n_layers=2, width=128, n_heads=4, head_dim=32, mlp_dim=512, max_len=5):
        super().__init__()
        if seq_len > max_len:
            raise ValueError(f"the dataset's sequences have {seq_len} tokens, more than model.max_len={max_len}")
        self.width = width
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_len, width))  # N(0, 1): the authors' pos_embedding init
        self.blocks = nn.ModuleList(GrokkingBlock(width, n_heads, head_dim, mlp_dim) for _ in range(n_layers))
        self.ln_f = _layer_norm(seq_len * width)
        self.head = nn.Linear(seq_len * width, num_classes)
        _flax_init(self)

    def forward(self, tokens):
        x = self.token(tokens) * math.sqrt(self.width) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x.flatten(1)))


def _flax_init(model):
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, 0.0, 1.0)
            module.weight.data.mul_(1.0 / math.sqrt(module.in_features) / 0.87962566103423978)  # lecun_normal
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, module.embedding_dim**-0.5)


@register_model("grokking_transformer")
def grokking_transformer(info, n_layers=2, width=128, n_heads=4, head_dim=32, mlp_dim=512, max_len=5):
    return GrokkingTransformer(info["vocab_size"], info["num_classes"], info["seq_len"], n_layers, width, n_heads, head_dim, mlp_dim, max_len)
