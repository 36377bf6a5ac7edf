"""The encoder-decoder Transformer of fairseq's `transformer_iwslt_de_en`, with attention from nn.Linear.

Dimensions: 6 encoder + 6 decoder layers, model width 512, FFN 1024, 4 heads, dropout 0.3, post-LayerNorm
(fairseq's default `normalize_before=False`), embeddings scaled by sqrt(512) plus fairseq's sinusoidal positions
(no parameters), decoder input and output embeddings shared. With fairseq's IWSLT14 dictionaries (8,848 de,
6,632 en types) it has 39,469,056 parameters.

`forward((src_tokens, prev_output_tokens))` returns logits (batch, target length, target vocabulary), as the
loop's `model(inputs)` calls it; `beam_search` (in harness/models/beam_search.py) decodes with it.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.attention import MultiHeadAttention
from harness.registry import register_model


def sinusoidal_positions(length, dim, padding_idx, device):
    """fairseq's SinusoidalPositionalEmbedding for positions padding_idx+1 .. padding_idx+length:
    sin in the first half of the channels, cos in the second, frequencies 10000^(−k/(dim/2 − 1))."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / (half - 1)))
    positions = torch.arange(padding_idx + 1, padding_idx + 1 + length, dtype=torch.float32, device=device)
    angles = positions[:, None] * freq[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _xavier_linear(d_in, d_out, gain=1.0):
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


def _init_attention(attention):
    """fairseq's MultiheadAttention.reset_parameters: xavier with gain 1/sqrt(2) for q/k/v, 1 for out; every bias zero,
    as the LLQR code (its transformer_iwslt.py passes bias_init=zeros and out_bias_init=zeros; fairseq itself zeroes
    only the out-bias)."""
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
        nn.init.zeros_(proj.bias)
    nn.init.xavier_uniform_(attention.out_proj.weight)
    nn.init.zeros_(attention.out_proj.bias)


class EncoderLayer(nn.Module):
    def __init__(self, dim, ffn, heads, dropout, attention_dropout, relu_dropout):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, attention_dropout)
        _init_attention(self.self_attn)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = _xavier_linear(dim, ffn), _xavier_linear(ffn, dim)
        self.dropout, self.relu_dropout = dropout, relu_dropout

    def forward(self, x, pad_mask):
        x = self.self_attn_layer_norm(x + F.dropout(self.self_attn(x, key_padding_mask=pad_mask), self.dropout, self.training))
        h = F.dropout(F.relu(self.fc1(x)), self.relu_dropout, self.training)
        return self.final_layer_norm(x + F.dropout(self.fc2(h), self.dropout, self.training))


class DecoderLayer(nn.Module):
    def __init__(self, dim, ffn, heads, dropout, attention_dropout, relu_dropout):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.encoder_attn = MultiHeadAttention(dim, heads, attention_dropout)
        _init_attention(self.self_attn)
        _init_attention(self.encoder_attn)
        self.self_attn_layer_norm, self.encoder_attn_layer_norm, self.final_layer_norm = (nn.LayerNorm(dim) for _ in range(3))
        self.fc1, self.fc2 = _xavier_linear(dim, ffn), _xavier_linear(ffn, dim)
        self.dropout, self.relu_dropout = dropout, relu_dropout

    def forward(self, x, target_pad_mask, memory, memory_pad_mask):
        drop = lambda z: F.dropout(z, self.dropout, self.training)  # noqa: E731
        x = self.self_attn_layer_norm(x + drop(self.self_attn(x, key_padding_mask=target_pad_mask, causal=True)))
        x = self.encoder_attn_layer_norm(x + drop(self.encoder_attn(x, memory, key_padding_mask=memory_pad_mask)))
        h = F.dropout(F.relu(self.fc1(x)), self.relu_dropout, self.training)
        return self.final_layer_norm(x + drop(self.fc2(h)))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, src_vocab, tgt_vocab, pad_index=1, eos_index=2, dim=512, ffn=1024, heads=4, encoder_layers=6,
                 decoder_layers=6, dropout=0.3, attention_dropout=0.0, relu_dropout=0.0, share_decoder_embeddings=True):
        super().__init__()
        self.pad_index, self.eos_index, self.dim, self.dropout = pad_index, eos_index, dim, dropout
        self.src_embed = nn.Embedding(src_vocab, dim, padding_idx=pad_index)
        self.tgt_embed = nn.Embedding(tgt_vocab, dim, padding_idx=pad_index)
        for embedding in (self.src_embed, self.tgt_embed):  # fairseq's Embedding(): N(0, dim^-1/2), pad row 0
            nn.init.normal_(embedding.weight, 0.0, dim**-0.5)
            nn.init.zeros_(embedding.weight[pad_index])
        args = (dim, ffn, heads, dropout, attention_dropout, relu_dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*args) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*args) for _ in range(decoder_layers))
        self.output_projection = nn.Linear(dim, tgt_vocab, bias=False)
        if share_decoder_embeddings:
            self.output_projection.weight = self.tgt_embed.weight
        else:
            nn.init.normal_(self.output_projection.weight, 0.0, dim**-0.5)

    def _embed(self, embedding, tokens):
        x = math.sqrt(self.dim) * embedding(tokens) + sinusoidal_positions(tokens.shape[1], self.dim, self.pad_index, tokens.device)
        return F.dropout(x, self.dropout, self.training)

    def encode(self, src_tokens):
        pad_mask = src_tokens.eq(self.pad_index)
        x = self._embed(self.src_embed, src_tokens)
        for layer in self.encoder_layers:
            x = layer(x, pad_mask)
        return x, pad_mask

    def decode(self, prev_output_tokens, memory, memory_pad_mask):
        target_pad_mask = prev_output_tokens.eq(self.pad_index)
        x = self._embed(self.tgt_embed, prev_output_tokens)
        for layer in self.decoder_layers:
            x = layer(x, target_pad_mask, memory, memory_pad_mask)
        return self.output_projection(x)

    def forward(self, inputs):
        src_tokens, prev_output_tokens = inputs
        memory, pad_mask = self.encode(src_tokens)
        return self.decode(prev_output_tokens, memory, pad_mask)


@register_model("transformer_iwslt_de_en")
def transformer_iwslt_de_en(info, dim=512, ffn=1024, heads=4, encoder_layers=6, decoder_layers=6, dropout=0.3,
                            attention_dropout=0.0, relu_dropout=0.0, share_decoder_embeddings=True):
    return Seq2SeqTransformer(info["src_vocab_size"], info["tgt_vocab_size"], info.get("pad_index", 1), info.get("eos_index", 2),
                              dim, ffn, heads, encoder_layers, decoder_layers, dropout, attention_dropout, relu_dropout,
                              share_decoder_embeddings)
