"""The stage abstraction of LLQR: a network as a chain x_{i+1} = f_i(x_i, θ_i).

llqr_spec.md §1 [P][C]: the state x_i is the whole minibatch activation (a pytree; a tuple carries a
residual stream), x_0 is the input batch, and a stage is *controlled* (it owns parameters θ_i) or
*passive* (θ_i = ∅: activations, pooling, flatten, residual add, log-softmax).

How a model becomes stages (our reading of the authors' `models/*.py` stage descriptors, §5 [C]):

* ``nn.Sequential`` is expanded child by child (nested Sequentials are flattened); every child that
  is not a ``Sequential`` or a :class:`Residual` is one stage owning all of its parameters. So a plain
  ``nn.Sequential`` of torch layers (Linear, Conv2d, activations, pooling, Flatten, BatchNorm, ...)
  works as it is. Each BatchNorm is its own controlled stage, as in the authors' ResNet.
* A residual block is written ``Residual(block, shortcut=None)``; it is an ordinary ``nn.Module``
  computing ``block(x) + shortcut(x)`` (identity shortcut when ``None``), so it can sit inside an
  ``nn.Sequential`` and the model trains as usual. For LQR it expands into tuple-state stages, as in
  the authors' ResNet (§5 [C]): a passive *fork* x → (x, x); the stages of ``block`` acting on the
  first component while the second is carried; the stages of ``shortcut`` acting on the second
  component; a passive *join* (h, s) → h + s. Put the activation after the block as its own layer
  (``nn.Sequential(Residual(...), nn.ReLU())``).
* Any other module (your own layer) is one stage: f(x, θ) = module(x) with θ = its parameters.

Stage functions are pure: parameters enter through ``torch.func.functional_call`` and buffers are
cloned on every call, so BatchNorm in training mode uses batch statistics without touching the
model's running statistics ([E], spec §5). Dropout in training mode is not supported by the exact
reference (each call would draw a new mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

State = object  # a tensor or a (nested) tuple of tensors


class Residual(nn.Module):
    """``block(x) + shortcut(x)``; ``shortcut=None`` is the identity. Expands into tuple-state stages."""

    def __init__(self, block: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.block(x) + skip


@dataclass
class Stage:
    """One stage x_{i+1} = fn(x_i, params); ``params`` are the model's own Parameter objects."""

    fn: Callable[[State, tuple], State]
    params: list = field(default_factory=list)
    name: str = ""

    @property
    def controlled(self) -> bool:
        return len(self.params) > 0


def _module_stage(module: nn.Module, name: str) -> Stage:
    param_names = [n for n, _ in module.named_parameters()]
    params = [p for _, p in module.named_parameters()]

    def fn(x, ps, module=module, param_names=param_names):
        # Buffers cloned per call: BatchNorm's in-place running-stat update hits the clone [E].
        tensors = {n: b.clone() for n, b in module.named_buffers()}
        tensors.update(zip(param_names, ps))
        return functional_call(module, tensors, (x,))

    return Stage(fn, params, name or type(module).__name__)


def _lift(stage: Stage, component: int) -> Stage:
    """The same stage acting on one component of a (main, carried) tuple state."""

    def fn(x, ps, inner=stage.fn, component=component):
        parts = list(x)
        parts[component] = inner(parts[component], ps)
        return tuple(parts)

    return Stage(fn, stage.params, f"{stage.name}[{component}]")


def _fork(x, ps):
    return (x, x)


def _join(x, ps):
    return x[0] + x[1]


def build_stages(model: nn.Module, prefix: str = "") -> list[Stage]:
    """Expand ``model`` into its list of stages (see the module docstring)."""
    if isinstance(model, nn.Sequential):
        stages = []
        for name, child in model.named_children():
            stages += build_stages(child, f"{prefix}{name}.")
        return stages
    if isinstance(model, Residual):
        stages = [Stage(_fork, [], f"{prefix}fork")]
        stages += [_lift(s, 0) for s in build_stages(model.block, f"{prefix}block.")]
        if model.shortcut is not None:
            stages += [_lift(s, 1) for s in build_stages(model.shortcut, f"{prefix}shortcut.")]
        stages.append(Stage(_join, [], f"{prefix}join"))
        return stages
    return [_module_stage(model, prefix.rstrip(".") or type(model).__name__)]


def log_softmax_stage() -> Stage:
    """The passive log-softmax head the authors append for the NGD divergence (spec §2 [C])."""
    return Stage(lambda z, ps: torch.log_softmax(z, dim=-1), [], "log_softmax")


def rollout(stages: list[Stage], inputs: torch.Tensor, params_per_stage=None) -> list[State]:
    """States x_0..x_N; ``params_per_stage`` overrides each stage's parameters (default: its own)."""
    states = [inputs]
    for i, stage in enumerate(stages):
        ps = tuple(stage.params) if params_per_stage is None else params_per_stage[i]
        states.append(stage.fn(states[-1], ps))
    return states


# ---- flattening a state pytree to one vector (the exact reference works with dense matrices) ----

def state_leaves(state: State) -> list[torch.Tensor]:
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in state_leaves(part)]
    return [state]


def flatten_state(state: State) -> torch.Tensor:
    return torch.cat([leaf.reshape(-1) for leaf in state_leaves(state)])


def unflatten_state(vec: torch.Tensor, like: State) -> State:
    """Inverse of :func:`flatten_state` for a state shaped like ``like``."""
    out, _ = _unflatten(vec, like, 0)
    return out


def _unflatten(vec, like, offset):
    if isinstance(like, (tuple, list)):
        parts = []
        for part in like:
            piece, offset = _unflatten(vec, part, offset)
            parts.append(piece)
        return tuple(parts), offset
    n = like.numel()
    return vec[offset:offset + n].reshape(like.shape), offset + n


def flatten_params(params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params]) if len(params) else torch.zeros(0)


def unflatten_params(vec: torch.Tensor, like) -> tuple:
    out, offset = [], 0
    for p in like:
        out.append(vec[offset:offset + p.numel()].reshape(p.shape))
        offset += p.numel()
    return tuple(out)
