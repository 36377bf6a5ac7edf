"""The one protocol between the training loop and any optimizer.

The loop never branches on an optimizer's name. What a second-order method needs reaches it this way:

1. **Constructor keywords.** The optimizer is built with `hydra.utils.instantiate(cfg.optimizer, params=...)`
   plus those of the following keywords that its constructor's signature names:
   - `model`: the `nn.Module` being trained (for module hooks, or JVPs through `torch.func.functional_call`);
   - `loss`: the kind of loss on the model's output, one of `harness.data.LOSS_KINDS`
     ("cross_entropy" on logits (..., C) with integer targets, mean over all positions; "mse" = ½‖out − y‖²
     summed over outputs, mean over the batch; "binary_cross_entropy" on one logit per sample; "objective":
     the output is the loss itself). This names the output curvature (Gauss-Newton / Fisher);
   - `sample_batch`: `sample_batch(batch_size) -> (inputs, targets)`, a fresh training batch on the
     training device, for optimizers that refit on a batch of their own.
2. **The closure.** Every step the loop calls exactly `loss = optimizer.step(closure)`, where
   - `closure()` zeroes the grads, runs the forward pass, calls `loss.backward()`, clips the gradient when
     `trainer.grad_clip` is set, and returns the loss: the torch convention, so torch.optim works as is;
   - `closure(backward=False)` returns the loss with its graph and leaves `.grad` alone, for optimizers
     that differentiate themselves (Hessian-vector products by double backward, finite differences);
   - each call restores the RNG state the step started with, so repeated calls see the same dropout
     masks and the same random L2 coefficients (finite-difference HVPs need this);
   - `closure.inputs`, `closure.targets` and `closure.model` are the current batch and the model.
3. **Learning rates.** Schedules set `group["lr"]` (and any other step-size key they are told to) from
   `group["initial_<key>"]`, so an optimizer's parameter step size must be the param-group key `lr`.
"""

import inspect

import hydra.utils
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.errors import ConfigError


def loss_function(kind):
    """The mean loss of a model's output for one of the loss kinds above."""
    if kind == "cross_entropy":
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if kind == "mse":
        return lambda out, y: 0.5 * (out - y).pow(2).reshape(out.shape[0], -1).sum(1).mean()
    if kind == "binary_cross_entropy":
        return lambda out, y: F.binary_cross_entropy_with_logits(out, y)
    if kind == "objective":
        return lambda out, y: out.mean()
    raise ConfigError(f"loss kind {kind!r} is not known")


class LossClosure:
    """The closure of one training step (see the module docstring).

    `regularizer(model)`, when given, is added to the loss (coupled L2 weight decay, possibly randomised);
    `after_backward(model)`, when given, runs right after `loss.backward()` (gradient averaging over ranks).
    """

    def __init__(self, model, inputs, targets, loss_fn, regularizer=None, grad_clip=None, autocast=None, after_backward=None):
        self.model, self.inputs, self.targets = model, inputs, targets
        self.loss_fn, self.regularizer, self.grad_clip = loss_fn, regularizer, grad_clip
        self.autocast, self.after_backward = autocast, after_backward
        self.rng_state = torch.random.get_rng_state()
        self.cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.data_loss = None  # the loss without the regularizer, from the first call

    def __call__(self, backward=True):
        torch.random.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng_state)
        if backward:
            self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            if self.autocast is not None:
                with self.autocast():
                    data_loss = self.loss_fn(self.model(self.inputs), self.targets).float()
            else:
                data_loss = self.loss_fn(self.model(self.inputs), self.targets)
            loss = data_loss if self.regularizer is None else data_loss + self.regularizer(self.model)
        if self.data_loss is None:
            self.data_loss = data_loss.detach()
        if backward:
            loss.backward()
            if self.after_backward is not None:  # data parallel: average the gradients over ranks
                self.after_backward(self.model)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return loss


def l2_regularizer(strength, randomized=False, exclude_norm_and_bias=False):
    """Coupled weight decay as a loss term: ½λ‖θ‖², or the PSGD scripts' randomised λ·r·θ² with r ~ U(0, 1)
    drawn per entry (same expected gradient λθ; psgd_notes.md §0 item 4). None when λ = 0."""
    if not strength:
        return None

    def regularizer(model):
        total = 0.0
        for name, p in model.named_parameters():
            if not p.requires_grad or (exclude_norm_and_bias and p.ndim <= 1):
                continue
            if randomized:
                total = total + strength * (torch.rand_like(p) * p * p).sum()
            else:
                total = total + 0.5 * strength * (p * p).sum()
        return total

    return regularizer


def build_optimizer(cfg, model, loss_kind, sample_batch):
    """Instantiate `cfg` (a `_target_` config) with the protocol keywords its constructor accepts."""
    target = hydra.utils.get_class(cfg["_target_"])
    _validate_step_sizes(cfg)
    accepted = inspect.signature(target.__init__).parameters
    extras = {"model": model, "loss": loss_kind, "sample_batch": sample_batch}
    extras = {key: value for key, value in extras.items() if key in accepted}
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return hydra.utils.instantiate(cfg, params, **extras, _convert_="all")
    except Exception as error:  # Hydra wraps the constructor's ValueError; report its message on one line
        cause = error.__cause__ or error
        raise ConfigError(f"optimizer {cfg['_target_']}: {cause}") from error


def _validate_step_sizes(cfg):
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key in ("lr", "weight_decay", "momentum", "lr_preconditioner"):
        value = plain.get(key)
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"optimizer.{key}={value} is invalid: it must be >= 0")
