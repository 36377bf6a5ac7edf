"""ImageNet models from timm: ResNet-50 (25,557,032 parameters, as torchvision's) and ViT-S/16 (22,050,664).

timm builds attention from nn.Linear (a fused `qkv` Linear and a `proj` Linear), so Kronecker-factored optimizers
see every weight matrix. Weights are initialised from scratch (no pretrained download).
"""

from harness.models.initialization import initialize
from harness.models.padding import apply_padding
from harness.registry import register_model


def _timm_model(name, info, **kwargs):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=info["num_classes"], in_chans=info.get("in_channels", 3), **kwargs)


@register_model("resnet50")
def resnet50(info, zero_init_last=True, init="torch", bn_momentum=0.1, padding="torch"):
    """ResNet-50 v1.5 (stride on the 3×3 convolution), timm's `resnet50`. `init="flax"`, `bn_momentum=0.01`,
    `padding="flax"`: the LLQR code's flax defaults (its resnet.py, create_resnet50: 'SAME' padding of the 7×7 stem,
    the max-pool and the stride-2 convolutions), every BN scale 1 whatever `zero_init_last` says."""
    model = _timm_model("resnet50", info, zero_init_last=zero_init_last)
    return initialize(apply_padding(model, padding), init, bn_momentum)


@register_model("vit_s16")
def vit_s16(info, drop_path_rate=0.0, dropout=0.0):
    """ViT-S/16 (12 layers, width 384, 6 heads, MLP 1536) at the dataset's image size (224 for ImageNet)."""
    return _timm_model("vit_small_patch16_224", info, img_size=info.get("image_size", 224), drop_path_rate=drop_path_rate, drop_rate=dropout)
