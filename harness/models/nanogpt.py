"""nanoGPT (Karpathy): a GPT-2 style decoder, with attention built from nn.Linear.

Layout and initialisation follow nanoGPT's `model.py`: token and position embeddings, pre-LayerNorm blocks
(fused `c_attn` q/k/v projection, `c_proj`; MLP `c_fc` 4× wide with GELU, `c_proj`), a final LayerNorm and
an LM head tied to the token embedding; weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2·n_layer)).
The PSGD authors' fork (opooladz/Preconditioned-Stochastic-Gradient-Descent@7a6b914, nanoGPT-PSGD/model.py) is the
earlier nanoGPT: an untied LM head (`tie_weights: false`), biases, no init of its own (`init: torch`: PyTorch's layer
defaults) and the tanh GELU (`gelu_approximate: tanh`). GPT-2 124M (12/12/768, block 1024, vocab 50257, bias) has
124,439,808 parameters (nanoGPT prints 123.65M: it leaves out the position embedding). The model returns logits at
every position, (batch, time, vocab).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's `bias=False` drops it; torch's can only drop both)."""

    def __init__(self, dim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout, bias, gelu_approximate="none"):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.gelu_approximate = gelu_approximate

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias, gelu_approximate="none"):
        super().__init__()
        self.ln_1, self.ln_2 = LayerNorm(n_embd, bias), LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.mlp = MLP(n_embd, dropout, bias, gelu_approximate)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True,
                 tie_weights=True, init="gpt2", gelu_approximate="none"):
        super().__init__()
        if init not in ("gpt2", "torch"):
            raise ValueError(f"model.init={init!r} is invalid; choose 'gpt2' (N(0, 0.02)) or 'torch' (layer defaults)")
        if gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"model.gelu_approximate={gelu_approximate!r} is invalid; choose 'none' (exact erf GELU) "
                             "or 'tanh' (GPT-2's approximation)")
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout, bias, gelu_approximate) for _ in range(n_layer))
        self.ln_f = LayerNorm(n_embd, bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying (nanoGPT, GPT-2)
        if init == "gpt2":  # "torch": the layers' own initialisation, which nanoGPT-PSGD/model.py keeps
            self.apply(_init_weights)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds the model's block_size {self.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)


@register_model("nanogpt")
def nanogpt(info, n_layer=6, n_head=6, n_embd=384, block_size=None, dropout=0.2, bias=False, tie_weights=True,
            init="gpt2", gelu_approximate="none"):
    """nanoGPT; `block_size` defaults to the dataset's context length (info["seq_len"])."""
    block_size = block_size or info["seq_len"]
    return GPT(info["vocab_size"], block_size, n_layer, n_head, n_embd, dropout, bias, tie_weights, init,
               gelu_approximate)
