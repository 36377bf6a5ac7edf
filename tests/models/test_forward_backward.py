"""Each model runs forward and backward at a tiny size, and every weight matrix lives in a Linear, Conv or Embedding
(no nn.MultiheadAttention, no nn.LSTM), so Kronecker-factored optimizers can see it."""

import pytest
import torch
import torch.nn as nn

from harness.models import MODELS

IMAGES = {"num_classes": 5, "in_channels": 3, "image_size": 32}
TOKENS = {"vocab_size": 13, "seq_len": 9}
SEQ2SEQ = {"src_vocab_size": 17, "tgt_vocab_size": 15, "pad_index": 1, "eos_index": 2}

# (model, info, tiny config, inputs, expected output shape)
TINY = [
    ("resnet18", IMAGES, dict(width=4, activation="soft_lrelu"), torch.randn(2, 3, 32, 32), (2, 5)),
    ("resnet18", IMAGES, dict(width=4, shortcut=False), torch.randn(2, 3, 32, 32), (2, 5)),
    ("vgg16_bn", IMAGES, dict(width=4, hidden=8), torch.randn(2, 3, 32, 32), (2, 5)),
    ("wide_resnet", IMAGES, dict(depth=10, widen_factor=1, dropout=0.3), torch.randn(2, 3, 32, 32), (2, 5)),
    ("resnet50", IMAGES, {}, torch.randn(2, 3, 32, 32), (2, 5)),
    ("vit_s16", IMAGES, {}, torch.randn(2, 3, 32, 32), (2, 5)),
    ("nanogpt", TOKENS, dict(n_layer=2, n_head=2, n_embd=8), torch.randint(13, (2, 9)), (2, 9, 13)),
    ("lstm_lm", TOKENS, dict(emb_size=6, hidden_size=10, num_layers=3), torch.randint(13, (2, 9)), (2, 9, 13)),
    ("grokking_transformer", {"vocab_size": 13, "num_classes": 11, "seq_len": 4}, dict(width=8, head_dim=4, mlp_dim=16),
     torch.randint(13, (2, 4)), (2, 11)),
    ("transformer_iwslt_de_en", SEQ2SEQ, dict(dim=8, ffn=16, heads=2, encoder_layers=2, decoder_layers=2),
     (torch.tensor([[5, 6, 7, 2], [8, 2, 1, 1]]), torch.tensor([[2, 9, 10], [2, 11, 1]])), (2, 3, 15)),
]


@pytest.mark.parametrize("name,info,keys,inputs,shape", TINY, ids=[f"{t[0]}-{i}" for i, t in enumerate(TINY)])
def test_forward_backward_at_tiny_size(name, info, keys, inputs, shape):
    torch.manual_seed(0)
    model = MODELS[name](info, **keys)
    out = model(inputs)
    assert out.shape == shape
    out.float().square().mean().backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), param_name


KRONECKER_VISIBLE = (nn.Linear, nn.Conv2d, nn.Embedding)


@pytest.mark.parametrize("name,info,keys,inputs,shape", TINY, ids=[f"{t[0]}-{i}" for i, t in enumerate(TINY)])
def test_every_weight_matrix_is_in_a_linear_conv_or_embedding(name, info, keys, inputs, shape):
    model = MODELS[name](info, **keys)
    assert not any(isinstance(m, (nn.MultiheadAttention, nn.LSTM, nn.GRU, nn.RNN)) for m in model.modules())
    owners = {id(m.weight) for m in model.modules() if isinstance(m, KRONECKER_VISIBLE)}
    tables = {"position", "pos_embed", "cls_token"}  # learned position tables and ViT's class token
    for param_name, p in model.named_parameters():
        if p.ndim >= 2 and param_name.split(".")[-1] not in tables:
            assert id(p) in owners, f"{param_name} ({tuple(p.shape)}) is not the weight of a Linear/Conv/Embedding"


def test_weight_tying():
    gpt = MODELS["nanogpt"](TOKENS, n_layer=1, n_head=2, n_embd=8)
    lstm = MODELS["lstm_lm"](TOKENS, emb_size=6, hidden_size=10, num_layers=2)
    seq2seq = MODELS["transformer_iwslt_de_en"](SEQ2SEQ, dim=8, ffn=16, heads=2, encoder_layers=1, decoder_layers=1)
    assert gpt.lm_head.weight is gpt.wte.weight
    assert lstm.decoder.weight is lstm.encoder.weight
    assert seq2seq.output_projection.weight is seq2seq.tgt_embed.weight


def test_lstm_dropconnect_mask_is_fixed_within_a_sequence_and_off_in_eval():
    torch.manual_seed(0)
    model = MODELS["lstm_lm"](TOKENS, emb_size=6, hidden_size=10, num_layers=1, wdrop=0.5, dropout=0, dropouth=0, dropouti=0, dropoute=0)
    tokens = torch.randint(13, (2, 9))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    torch.manual_seed(1)
    first = model(tokens)
    torch.manual_seed(1)
    assert torch.equal(model(tokens), first), "the same RNG state gives the same masks (the closure relies on it)"
