"""The CNNs' `padding` option: torch's symmetric padding, or flax's 'SAME', which the LLQR code's (JAX) models use
(SimonDufLab/LLQR lqr_optimizer/_src/models/resnet.py, wide_resnet.py: `nn.Conv(..., padding='SAME')`,
`nn.max_pool(..., padding='SAME')`).

The two agree for stride 1 and odd kernels. For stride s > 1, XLA's 'SAME' (lax.padtype_to_pads) pads
total = max((⌈n/s⌉ − 1)·s + k − n, 0) pixels and puts the odd one at the end (bottom/right): a 3×3 stride-2
convolution of an even-sized input is padded (0, 1) instead of torch's (1, 1), so its windows are centred on the odd
pixels 1, 3, 5, ... instead of 0, 2, 4, ...; a 7×7 stride-2 stem on 224 pixels is padded (2, 3) instead of (3, 3).
`padding="flax"` wraps every strided Conv2d and MaxPool2d of a model in `nn.Sequential(SamePadding, layer)` with the
layer's own padding set to 0, so curvature code that reads a convolution's input (K-FAC) sees the padded tensor.
"""

import math

import torch.nn as nn
import torch.nn.functional as F

PADDINGS = ("torch", "flax")


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def same_pads(size, kernel, stride, dilation=1):
    """XLA 'SAME' padding (before, after) of one spatial dimension of `size` pixels."""
    span = dilation * (kernel - 1) + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


class SamePadding(nn.Module):
    """Pads an (N, C, H, W) input as XLA's 'SAME' would for the layer that follows; `value` fills the border
    (0 before a convolution, −inf before a max-pool, as flax's max_pool)."""

    def __init__(self, kernel_size, stride, dilation=1, value=0.0):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.value = value

    def forward(self, x):
        (top, bottom), (left, right) = (same_pads(n, k, s, d) for n, k, s, d in
                                        zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation))
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, value={self.value}"


def _wrap(layer, name):
    """nn.Sequential(SamePadding, layer) with the layer's own padding removed."""
    kernel, stride, dilation = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
    padding = _pair(layer.padding)
    expected = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise ValueError(f"model.padding='flax': layer {name!r} has padding_mode={layer.padding_mode!r}; "
                         "'SAME' padding replaces zero padding only")
    if padding != expected:
        raise ValueError(f"model.padding='flax': layer {name!r} pads {padding}, not the half-kernel {expected} that "
                         "'SAME' replaces; build it with padding (k − 1)/2 or leave model.padding='torch'")
    if isinstance(layer, nn.MaxPool2d):
        if layer.ceil_mode:
            raise ValueError(f"model.padding='flax': max-pool {name!r} has ceil_mode=True; 'SAME' replaces floor mode")
        layer.padding, value = 0, float("-inf")
    else:
        layer.padding, value = (0, 0), 0.0
    return nn.Sequential(SamePadding(kernel, stride, dilation, value), layer)


def apply_padding(model, padding="torch"):
    """`padding="flax"`: every Conv2d and MaxPool2d with a stride above 1 pads as XLA's 'SAME' (module docstring);
    stride-1 layers are left as they are (the two paddings agree). `padding="torch"` returns the model unchanged."""
    if padding not in PADDINGS:
        raise ValueError(f"model.padding={padding!r} is not known; choose one of {PADDINGS}")
    if padding == "torch":
        return model
    strided = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.MaxPool2d)) and max(_pair(module.stride)) > 1]
    for name, module in strided:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _wrap(module, name))
    return model
