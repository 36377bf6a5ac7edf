"""Our nn.Linear-built layers compute what torch's fused layers and the papers' formulas compute."""

import itertools
import math

import torch
import torch.nn as nn

from harness.models.attention import MultiHeadAttention
from harness.models.beam_search import beam_search
from harness.models.lstm_lm import LSTMLayer
from harness.models.nanogpt import GPT
from harness.models.transformer import Seq2SeqTransformer, sinusoidal_positions


def test_lstm_layer_equals_nn_lstm():
    torch.manual_seed(0)
    ours, reference = LSTMLayer(5, 7), nn.LSTM(5, 7, batch_first=True)
    with torch.no_grad():
        ours.ih.weight.copy_(reference.weight_ih_l0)
        ours.ih.bias.copy_(reference.bias_ih_l0)
        ours.hh.weight.copy_(reference.weight_hh_l0)
        ours.hh.bias.copy_(reference.bias_hh_l0)
    x = torch.randn(3, 6, 5)
    torch.testing.assert_close(ours(x), reference(x)[0], rtol=1e-5, atol=1e-6)


def test_attention_equals_nn_multihead_attention_with_padding_and_causal_mask():
    torch.manual_seed(0)
    ours, reference = MultiHeadAttention(8, 2), nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    x, memory = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    pad = torch.tensor([[False, False, False, True], [False, False, False, False]])
    expected = reference(x, memory, memory, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(ours(x, memory, key_padding_mask=pad), expected, rtol=1e-5, atol=1e-6)
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    self_pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    expected = reference(x, x, x, attn_mask=future, key_padding_mask=self_pad, need_weights=False)[0]
    got = ours(x, key_padding_mask=self_pad, causal=True)
    torch.testing.assert_close(got[:, :4], expected[:, :4], rtol=1e-5, atol=1e-6)  # the padded query row is unused


def test_gpt_attention_equals_explicit_causal_softmax():
    torch.manual_seed(0)
    model = GPT(11, block_size=6, n_layer=1, n_head=2, n_embd=8, dropout=0.0, bias=True).eval()
    attn, x = model.h[0].attn, torch.randn(2, 6, 8)
    q, k, v = attn.c_attn(x).split(8, dim=2)
    heads = lambda z: z.view(2, 6, 2, 4).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 6, 8)
    torch.testing.assert_close(attn(x), attn.c_proj(y), rtol=1e-5, atol=1e-6)


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0).eval()
    tokens = torch.randint(11, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5])


def test_sinusoidal_positions_follow_fairseq_formula():
    dim, pad = 8, 1
    table = sinusoidal_positions(3, dim, pad, torch.device("cpu"))
    for row, position in enumerate(range(pad + 1, pad + 4)):
        for k in range(dim // 2):
            angle = position * math.exp(-k * math.log(10000.0) / (dim // 2 - 1))
            assert math.isclose(float(table[row, k]), math.sin(angle), abs_tol=1e-5)
            assert math.isclose(float(table[row, dim // 2 + k]), math.cos(angle), abs_tol=1e-5)


def _sequence_log_prob(model, src, sequence):
    prev = torch.tensor([[model.eos_index] + sequence[:-1]])
    log_probs = torch.log_softmax(model((src, prev))[0], dim=-1)
    return sum(float(log_probs[t, token]) for t, token in enumerate(sequence))


@torch.no_grad()
def test_beam_search_with_a_wide_beam_finds_the_best_normalised_sequence():
    """With beam ≥ the number of prefixes, beam search is exhaustive: it must return the sequence with the best
    log-probability / length (EOS counted, at least one token, at most max_len) found by enumerating all."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = Seq2SeqTransformer(7, 7, dim=16, ffn=32, heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0).eval()
        for p in model.parameters():
            p.normal_(0.0, 1.0)
        src = torch.tensor([[4, 5, 6, 2], [5, 2, 1, 1]])
        found = beam_search(model, src, beam=30, max_len_b=3)
        for i in range(2):
            row = src[i : i + 1, : int(src[i].ne(1).sum())]
            candidates = [[*w, 2] for k in range(1, 4) for w in itertools.product([0, 3, 4, 5, 6], repeat=k)]
            best = max(candidates, key=lambda s: _sequence_log_prob(model, row, s) / len(s))
            assert found[i] == best[:-1]
