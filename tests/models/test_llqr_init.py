"""The LLQR presets' models start as the authors' flax models do (SimonDufLab/LLQR @ d2c62b3): lecun_normal kernels
(variance 1/fan_in, truncated at 2 standard deviations of the untruncated normal), zero biases, BN scale 1 and bias 0,
flax BN momentum 0.99 (torch 0.01) for the ResNets, and zero attention biases in the IWSLT transformer. The defaults
(torch's initialisation, BN momentum 0.1) are left as they were for the other presets."""

import pytest
import torch
import torch.nn as nn

from harness.models import MODELS
from harness.models.attention import MultiHeadAttention
from harness.models.initialization import lecun_normal_
from tests.harness.helpers import compose_config

CIFAR = {"num_classes": 10, "in_channels": 3, "image_size": 32}
BATCHNORM = nn.modules.batchnorm._BatchNorm


def fan_in(weight):
    return weight.shape[1] * (weight[0, 0].numel() if weight.ndim > 2 else 1)  # in_channels × kernel height × width


@pytest.mark.parametrize("shape", [(300, 1000), (128, 64, 3, 3)])
def test_lecun_normal_has_variance_one_over_fan_in_and_is_truncated(shape):
    torch.manual_seed(0)
    weight = lecun_normal_(torch.empty(shape))
    assert float(weight.var()) * fan_in(weight) == pytest.approx(1.0, rel=0.03)
    bound = 2 * (1 / fan_in(weight)) ** 0.5 / 0.87962566103423978  # ±2σ of the normal before truncation
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.95 * bound
    assert abs(float(weight.mean())) < 3 * (1 / (fan_in(weight) * weight.numel())) ** 0.5


def weights_and_norms(model):
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, BATCHNORM)]
    assert layers and norms
    return layers, norms


def assert_flax_init(model, momentum):
    layers, norms = weights_and_norms(model)
    for layer in layers:
        if layer.weight.numel() >= 4000:  # enough entries for a 10 % check of the variance
            assert float(layer.weight.detach().var()) * fan_in(layer.weight) == pytest.approx(1.0, rel=0.1), layer
        if layer.bias is not None:
            assert torch.all(layer.bias == 0), layer
    for norm in norms:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0) and norm.momentum == momentum


@pytest.mark.parametrize("name,keys,momentum", [
    ("resnet18", dict(width=16), 0.01),
    ("vgg16_bn", dict(width=16, hidden=64), 0.1),
    ("wide_resnet", dict(depth=10, widen_factor=2), 0.1),
])
def test_cifar_models_with_flax_init(name, keys, momentum):
    torch.manual_seed(0)
    assert_flax_init(MODELS[name](CIFAR, init="flax", bn_momentum=momentum, **keys), momentum)


def test_default_init_is_torch_s():
    torch.manual_seed(0)
    layers, norms = weights_and_norms(MODELS["resnet18"](CIFAR, width=16))
    big = [m for m in layers if m.weight.numel() >= 4000]
    # torch's kaiming_uniform_(a=√5): variance 1/(3 fan_in)
    assert all(float(m.weight.detach().var()) * fan_in(m.weight) == pytest.approx(1 / 3, rel=0.1) for m in big)
    assert all(m.momentum == 0.1 for m in norms)
    assert float(MODELS["vgg16_bn"](CIFAR, width=4, hidden=8).classifier[-1].bias.detach().abs().sum()) > 0


def test_resnet50_flax_init_undoes_the_zero_initialised_last_bn():
    torch.manual_seed(0)
    info = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    assert torch.all(MODELS["resnet50"](info).layer1[0].bn3.weight == 0), "timm's default zero-inits the last BN"
    model = MODELS["resnet50"](info, init="flax", bn_momentum=0.01)
    assert_flax_init(model, 0.01)
    assert torch.all(model.fc.bias == 0)


def test_iwslt_transformer_attention_biases_are_zero():
    seq2seq = {"src_vocab_size": 17, "tgt_vocab_size": 15, "pad_index": 1, "eos_index": 2}
    model = MODELS["transformer_iwslt_de_en"](seq2seq, dim=8, ffn=16, heads=2, encoder_layers=1, decoder_layers=1)
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attentions) == 3  # encoder self-attention, decoder self- and cross-attention
    for attention in attentions:
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
            assert torch.all(proj.bias == 0) and float(proj.weight.detach().abs().sum()) > 0


@pytest.mark.parametrize("preset,momentum", [
    ("llqr_resnet18_cifar10", 0.01), ("llqr_resnet18_cifar100_adamw", 0.01), ("llqr_vgg16_bn_cifar10", 0.1),
    ("llqr_wide_resnet28_10_cifar10", 0.1), ("imagenet_resnet50", 0.01),
])
def test_llqr_presets_use_the_authors_init_and_data_pipeline(preset, momentum):
    cfg = compose_config([f"experiment={preset}"])
    assert cfg.model.init == "flax" and cfg.model.bn_momentum == momentum
    if preset.startswith("imagenet"):
        assert cfg.dataset.crop == "squash"
    else:  # Cutout 16 on every CIFAR run, each dataset's statistics, reflect padding (the LLQR code's utils.py)
        assert (cfg.dataset.cutout, cfg.dataset.normalization, cfg.dataset.padding) == (16, "per_dataset", "reflect")


def test_psgd_presets_keep_the_defaults():
    cfg = compose_config(["experiment=table2_resnet18_cifar10"])
    assert (cfg.model.init, cfg.model.bn_momentum) == ("torch", 0.1)
    assert (cfg.dataset.cutout, cfg.dataset.normalization, cfg.dataset.padding) == (0, "adabelief", "zeros")
