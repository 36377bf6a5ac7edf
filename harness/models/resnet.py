"""ResNet-18, CIFAR variant (3×3 stem, no max-pool): 11,173,962 parameters for 10 classes.

`shortcut=False` removes the residual connections (the PSGD paper's ResNet18-RF), and
`activation="soft_lrelu"` is the PSGD reference code's smooth leaky ReLU 0.51x + 0.49·sqrt(x² + ε²) − 0.49ε.
`init="flax"`, `bn_momentum=0.01`, `padding="flax"` are the LLQR code's flax defaults (its resnet.py;
harness/models/initialization.py, harness/models/padding.py).
"""

import torch
import torch.nn as nn

from harness.models.initialization import initialize
from harness.models.padding import apply_padding
from harness.registry import register_model


class SoftLeakyReLU(nn.Module):
    """The PSGD reference's `soft_lrelu` (psgd_notes.md §6.2), with ε the float32 machine epsilon."""

    def forward(self, x):
        eps = torch.finfo(torch.float32).eps
        return 0.51 * x + 0.49 * torch.sqrt(x * x + eps * eps) - 0.49 * eps


def _activation(name):
    if name == "relu":
        return nn.ReLU()
    if name == "soft_lrelu":
        return SoftLeakyReLU()
    raise ValueError(f"model.activation={name!r} is not known; choose 'relu' or 'soft_lrelu'")


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, shortcut, activation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act1, self.act2 = _activation(activation), _activation(activation)
        self.shortcut = None
        if shortcut:
            self.shortcut = nn.Identity()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage, num_classes, in_channels=3, width=64, shortcut=True, activation="relu"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), _activation(activation))
        layers, c_in = [], width
        for stage, count in enumerate(blocks_per_stage):
            c_out = width * 2**stage
            for index in range(count):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and index == 0 else 1, shortcut, activation))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@register_model("resnet18")
def resnet18(info, width=64, shortcut=True, activation="relu", init="torch", bn_momentum=0.1, padding="torch"):
    model = ResNet([2, 2, 2, 2], info["num_classes"], info.get("in_channels", 3), width, shortcut, activation)
    return initialize(apply_padding(model, padding), init, bn_momentum)
