"""VGG16-BN for CIFAR (32×32 inputs), as in the LLQR code's `vgg.py`: thirteen 3×3 convolutions (with bias) each
followed by BatchNorm and ReLU, max-pooling after each of the five blocks, then Dropout 0.5 → Linear 512 → ReLU →
Dropout 0.5 → Linear 512 → ReLU → Linear classes. 15,253,578 parameters for 10 classes. `init="flax"` is the LLQR
code's initialisation (flax defaults; its BN momentum 0.9 is torch's default 0.1): harness/models/initialization.py."""

import torch.nn as nn

from harness.models.initialization import initialize
from harness.models.padding import apply_padding
from harness.registry import register_model

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
    def __init__(self, blocks, num_classes, in_channels=3, dropout=0.5, hidden=512, width=64):
        super().__init__()
        layers, c_in = [], in_channels
        for block in blocks:
            for c_out in (c * width // 64 for c in block):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c_in, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg16_bn")
def vgg16_bn(info, dropout=0.5, hidden=512, width=64, init="torch", bn_momentum=0.1, padding="torch"):
    """`width` scales every convolution's channels (64: the standard network; smaller for CPU tests)."""
    if info.get("image_size", 32) != 32:
        raise ValueError(f"vgg16_bn is the CIFAR variant (32×32 inputs); the dataset's images are {info['image_size']} wide")
    model = VGG(VGG16_BLOCKS, info["num_classes"], info.get("in_channels", 3), dropout, hidden, width)
    return initialize(apply_padding(model, padding), init, bn_momentum)
