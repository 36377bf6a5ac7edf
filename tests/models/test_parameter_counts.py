"""Every paper-scale model has its canonical parameter count (built on the meta device: no memory, no init cost)."""

import pytest
import torch
import torch.nn as nn

from harness.models import MODELS

CIFAR10 = {"num_classes": 10, "in_channels": 3, "image_size": 32}
IMAGENET = {"num_classes": 1000, "in_channels": 3, "image_size": 224}
PTB = {"vocab_size": 10000, "seq_len": 70}
FAIRSEQ_IWSLT = {"src_vocab_size": 8848, "tgt_vocab_size": 6632, "pad_index": 1, "eos_index": 2}  # fairseq's dictionaries

# (model, dataset info, config keys, published count and its source)
CANONICAL = [
    ("resnet18", CIFAR10, {}, 11_173_962),  # the issue; kuangliu/pytorch-cifar ResNet18
    ("nanogpt", {"vocab_size": 50257, "seq_len": 1024}, dict(n_layer=12, n_head=12, n_embd=768, bias=True, dropout=0.0), 124_439_808),  # GPT-2 small (HF gpt2)
    ("nanogpt", {"vocab_size": 65, "seq_len": 256}, {}, 10_646_784 + 256 * 384),  # nanoGPT prints 10.65M without wpe
    ("nanogpt", {"vocab_size": 50257, "seq_len": 8}, dict(n_layer=8, n_head=16, n_embd=512, bias=True, dropout=0.0), 50_955_776),  # PSGD "50.96M"
    ("lstm_lm", PTB, dict(num_layers=3), 24_221_600),  # AWD-LSTM PTB "24M"
    ("transformer_iwslt_de_en", FAIRSEQ_IWSLT, {}, 39_469_056),  # fairseq transformer_iwslt_de_en
    ("vgg16_bn", CIFAR10, {}, 15_253_578),  # torchvision vgg16_bn features 14,723,136 + CIFAR classifier 530,442
    ("wide_resnet", CIFAR10, {}, 36_479_194),  # WRN-28-10 (Zagoruyko & Komodakis: 36.5M)
    ("vit_s16", IMAGENET, {}, 22_050_664),  # timm vit_small_patch16_224 (22.05M)
    ("grokking_transformer", {"vocab_size": 99, "num_classes": 97, "seq_len": 4}, {}, None),  # counted below
]


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,info,keys,expected", CANONICAL, ids=[f"{c[0]}-{c[3]}" for c in CANONICAL])
def test_canonical_parameter_count(name, info, keys, expected):
    with torch.device("meta"):
        model = MODELS[name](info, **keys)
    if expected is None:  # grokking: count the LLQR code's layers by hand
        width, heads, head_dim, mlp, length = 128, 4, 32, 512, 4
        block = 2 * width + width * 3 * heads * head_dim + heads * head_dim * width + width + 2 * width * mlp + mlp + width
        expected = 99 * width + 5 * width + 2 * block + length * width + length * width * 97 + 97
    assert count(model) == expected


def test_resnet50_matches_torchvision():
    import torchvision

    with torch.device("meta"):
        ours, reference = MODELS["resnet50"](IMAGENET), torchvision.models.resnet50()
    assert count(ours) == count(reference) == 25_557_032


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lstm_lm_counts_equal_nn_lstm(layers):
    sizes = [400] + [1150] * (layers - 1) + [400]
    with torch.device("meta"):
        ours = MODELS["lstm_lm"](PTB, num_layers=layers)
        reference = sum(count(nn.LSTM(sizes[k], sizes[k + 1])) for k in range(layers)) + 10000 * 400 + 10000
    assert count(ours) == reference
