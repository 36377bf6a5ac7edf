"""`model.padding="flax"`: XLA's 'SAME' padding of strided layers (harness/models/padding.py), checked against an
independent construction: a 'SAME' stride-2 layer computes the stride-1 layer's output at every other position, the
odd ones (1, 3, 5, ...) for an even-sized input and the even ones for an odd-sized input, where torch's symmetric
padding always keeps the even ones."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines import KFAC
from harness.models import MODELS
from harness.models.padding import SamePadding, apply_padding, same_pads
from tests.baselines.helpers import protocol_closure
from tests.harness.helpers import compose_config

CIFAR = {"num_classes": 10, "in_channels": 3, "image_size": 32}


@pytest.mark.parametrize("size,kernel,stride,pads", [
    (32, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (224, 7, 2, (2, 3)), (112, 3, 2, (0, 1)), (32, 1, 2, (0, 0)),
    (7, 1, 2, (0, 0)), (32, 3, 1, (1, 1)), (32, 2, 2, (0, 0)),
])
def test_same_pads_are_xlas(size, kernel, stride, pads):
    assert same_pads(size, kernel, stride) == pads
    out = -(-size // stride)  # 'SAME' keeps ⌈n/s⌉ outputs
    assert (size + sum(pads) - kernel) // stride + 1 == out


@pytest.mark.parametrize("size,kernel", [(16, 3), (15, 3), (16, 7), (13, 7)])
def test_strided_same_conv_is_the_stride_one_conv_at_every_other_position(size, kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel, stride=2, padding=kernel // 2, bias=False)
    x = torch.randn(2, 3, size, size)
    full = F.conv2d(x, conv.weight, padding=kernel // 2)  # stride 1, symmetric: centred on every pixel
    first = 1 if size % 2 == 0 else 0
    torch.testing.assert_close(conv(x), full[..., ::2, ::2])  # torch: the even pixels
    same = apply_padding(nn.Sequential(conv), "flax")
    torch.testing.assert_close(same(x), full[..., first::2, first::2])


def test_strided_same_max_pool_pads_with_minus_infinity():
    x = torch.randn(2, 3, 16, 16) - 10.0  # all negative: a zero border would win every border window
    pool = apply_padding(nn.Sequential(nn.MaxPool2d(3, 2, 1)), "flax")
    full = F.max_pool2d(x, 3, 1, 1)
    torch.testing.assert_close(pool(x), full[..., 1::2, 1::2])
    assert isinstance(pool[0][0], SamePadding) and pool[0][0].value == float("-inf")


@pytest.mark.parametrize("name,config,strided", [
    ("resnet18", {"width": 8}, 6),           # 3 stride-2 3×3 convs and their 1×1 shortcuts
    ("wide_resnet", {"depth": 10, "widen_factor": 1}, 4),
    ("vgg16_bn", {"width": 4}, 5),            # the five 2×2 max-pools ('SAME' pads nothing on even sizes)
])
def test_cifar_models_keep_their_parameters_and_wrap_each_strided_layer(name, config, strided):
    torch.manual_seed(0)
    plain = MODELS[name](CIFAR, **config)
    torch.manual_seed(0)
    same = MODELS[name](CIFAR, padding="flax", **config)
    assert sum(isinstance(m, SamePadding) for m in same.modules()) == strided
    for p, q in zip(plain.parameters(), same.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), same.eval()
    moved = not torch.allclose(plain(x), same(x))
    assert moved == (name != "vgg16_bn")  # VGG: no strided conv, and its 2×2 pools are unpadded either way


def test_resnet50_pads_stem_pool_and_strided_convs_as_same():
    same = MODELS["resnet50"]({"num_classes": 5, "in_channels": 3}, padding="flax")
    pads = {name: m for name, m in same.named_modules() if isinstance(m, SamePadding)}
    assert len(pads) == 8  # stem 7×7, max-pool, three stride-2 3×3 convs and their 1×1 downsamples
    assert pads["conv1.0"].kernel_size == (7, 7) and pads["maxpool.0"].value == float("-inf")
    assert same(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_a_strided_layer_without_half_kernel_padding_is_refused():
    with pytest.raises(ValueError, match=r"layer '0' pads \(0, 0\), not the half-kernel \(1, 1\)"):
        apply_padding(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2)), "flax")
    with pytest.raises(ValueError, match=r"model.padding='same' is not known; choose one of \('torch', 'flax'\)"):
        apply_padding(nn.Sequential(), "same")


def test_kfac_reads_the_same_padded_input_of_a_wrapped_conv():
    torch.manual_seed(1)
    conv, head = nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Linear(3 * 2 * 2, 4)
    model = apply_padding(nn.Sequential(conv, nn.Flatten(), head), "flax").double()
    x, y = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    opt = KFAC(model.parameters(), model=model, lr=0.0, factor_decay=0.0, kl_clip=None, verbose=False)
    opt.step(protocol_closure(model, x, y))
    padded = F.pad(x, (0, 1, 0, 1))  # 'SAME' on 4 pixels: nothing before, one after
    patches = [padded[:, :, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3].reshape(5, -1) for i in range(2) for j in range(2)]
    rows = torch.cat([torch.cat([p, torch.ones(5, 1, dtype=torch.float64)], dim=1) for p in patches])
    torch.testing.assert_close(opt.state[conv.weight]["A"], rows.T @ rows / rows.shape[0])


@pytest.mark.parametrize("preset,padding", [
    ("llqr_resnet18_cifar10", "flax"), ("llqr_resnet18_cifar100_adamw", "flax"), ("llqr_vgg16_bn_cifar10", "torch"),
    ("llqr_wide_resnet28_10_cifar10", "flax"), ("imagenet_resnet50", "flax"), ("table2_resnet18_cifar10", "torch"),
])
def test_llqr_presets_pad_as_the_authors_flax_models(preset, padding):
    assert compose_config([f"experiment={preset}"]).model.padding == padding
