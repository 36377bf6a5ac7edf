"""Wide ResNet (Zagoruyko & Komodakis 2016) for CIFAR, as in the LLQR code's `wide_resnet.py`: a 3×3 stem of 16
channels, three groups of (depth − 4)/6 pre-activation blocks (BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3, 1×1
projection shortcuts where the shape changes) of 16k, 32k, 64k channels, then BN-ReLU-global pooling-Linear.
Convolutions have no bias; the LLQR code's dropout rate is 0. WRN-28-10 has 36,479,194 parameters for 10 classes.
`init="flax"` is the LLQR code's initialisation (flax defaults; its BN momentum 0.9 is torch's default 0.1):
harness/models/initialization.py; `padding="flax"` its 'SAME' padding of the stride-2 convolutions
(harness/models/padding.py)."""

import torch.nn as nn
import torch.nn.functional as F

from harness.models.initialization import initialize
from harness.models.padding import apply_padding
from harness.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, dropout):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.dropout(F.relu(self.bn2(out)), self.dropout, self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes, in_channels=3, dropout=0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"model.depth={depth} is invalid: depth − 4 must be a multiple of 6 (e.g. 16, 22, 28, 40)")
        per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, c_in = [], widths[0]
        for group, c_out in enumerate(widths[1:]):
            for index in range(per_group):
                blocks.append(PreActBlock(c_in, c_out, 2 if group > 0 and index == 0 else 1, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("wide_resnet")
def wide_resnet(info, depth=28, widen_factor=10, dropout=0.0, init="torch", bn_momentum=0.1, padding="torch"):
    model = WideResNet(depth, widen_factor, info["num_classes"], info.get("in_channels", 3), dropout)
    return initialize(apply_padding(model, padding), init, bn_momentum)
