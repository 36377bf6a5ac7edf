"""Multi-head attention from nn.Linear projections (no nn.MultiheadAttention), so that Kronecker-factored
optimizers see the query, key, value and output weight matrices as ordinary Linear layers.

The weighted sum itself is `F.scaled_dot_product_attention`, which has no parameters.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    """fairseq-style attention: separate q/k/v/out projections of `embed_dim`, `num_heads` heads.

    `key_padding_mask` (batch, source) is True at padded keys; `causal=True` masks future positions.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, head_dim=None):
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
            head_dim = embed_dim // num_heads
        inner = head_dim * num_heads
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key=None, value=None, key_padding_mask=None, causal=False):
        key = query if key is None else key
        value = key if value is None else value
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        mask = None
        if key_padding_mask is not None:  # SDPA's boolean mask is True where attention is allowed
            mask = ~key_padding_mask[:, None, None, :]
            if causal:
                t_q, t_k = q.shape[2], k.shape[2]
                mask = mask & torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(t_k - t_q)
                causal = False
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))
