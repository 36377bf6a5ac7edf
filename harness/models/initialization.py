"""The CNNs' `init` and `bn_momentum` options: torch's default initialisation, or flax's, which the LLQR code's (JAX)
models get (SimonDufLab/LLQR lqr_optimizer/_src/models/resnet.py, vgg.py, wide_resnet.py build nn.Conv, nn.Dense and
nn.BatchNorm with no initialiser arguments)."""

import torch.nn as nn

INITS = ("torch", "flax")


def lecun_normal_(weight):
    """flax's default kernel initialiser, jax.nn.initializers.lecun_normal(): a normal truncated at ±2 standard
    deviations, scaled (÷ 0.8796, the truncated unit normal's standard deviation) to variance 1/fan_in."""
    std = weight[0].numel() ** -0.5 / 0.87962566103423978  # fan_in: in_channels (/groups) × kernel area
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def initialize(model, init="torch", bn_momentum=0.1):
    """`init="flax"`: every Conv2d and Linear weight lecun_normal_, their biases 0, every BatchNorm scale 1 and bias 0
    (this also undoes a zero-initialised last BN). `bn_momentum`: torch's running-average momentum of every BatchNorm;
    flax's `momentum` m is torch's 1 − m (flax's default 0.99 is 0.01 here, torch's default 0.1 is flax's 0.9).
    Left as torch's: the running variance averages the unbiased batch variance (flax's the biased one), a factor
    n/(n − 1) with n = batch × height × width per channel, 1 + 1/2047 at the smallest here (CIFAR ResNet-18's 4×4
    last stage, batch 128); normalisation in training uses the biased variance in both."""
    if init not in INITS:
        raise ValueError(f"model.init={init!r} is not known; choose one of {INITS}")
    for module in model.modules():
        if init == "flax" and isinstance(module, (nn.Conv2d, nn.Linear)):
            lecun_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = bn_momentum
            if init == "flax":
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model
