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
     that differentiate themselves (Hessian-vector products by double backward, finite differences); such an
     optimizer computes its own gradient, so `trainer.grad_clip` cannot apply and a warning says so (PSGD clips
     its preconditioned gradient with `optimizer.grad_clip_max_norm`);
   - each call restores the RNG state the step started with, so repeated calls see the same dropout
     masks and the same random L2 coefficients (finite-difference HVPs need this);
   - `closure.inputs`, `closure.targets` and `closure.model` are the current batch and the model.
3. **Learning rates.** Schedules set `group["lr"]` (and any other step-size key they are told to) from
   `group["initial_<key>"]`, so an optimizer's parameter step size must be the param-group key `lr`.
4. **Gradient accumulation** (`trainer.grad_accumulation` = k > 1). `closure()` runs forward and backward on k
   micro-batches (the step's batch split along dim 0) and leaves in `.grad` the gradient of the whole batch's
   mean loss, so any optimizer that steps on `.grad` (torch.optim, K-FAC, Shampoo, LLQR) works unchanged.
   `closure(backward=False)` is refused (ConfigError): an optimizer that differentiates the loss itself needs the
   whole batch's graph at once, which is what accumulation avoids.
"""

import inspect
import re
import warnings

import hydra.utils
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.errors import ConfigError, UnsupportedLossError

IGNORE_INDEX = -100  # integer targets that do not count in a loss or a metric (padding); F.cross_entropy's default


def loss_function(kind, label_smoothing=0.0):
    """The mean loss of a model's output for one of the loss kinds above.

    `label_smoothing` ε (cross-entropy only; config key dataset.label_smoothing) is torch's: the target puts
    1 − ε + ε/V on the label and ε/V on every class. fairseq's label_smoothed_cross_entropy puts 1 − ε on the
    label and ε/(V − 1) on each other class; per token the two differ by ε/(V − 1)·(mean_c(−log p_c) − (−log p_y)),
    about 1e-4 nats at V = 10k (tests/harness/test_training_features.py checks the formula). The curvature in the logits is
    diag(p) − ppᵀ either way, so the loss kind an optimizer receives stays "cross_entropy"."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"dataset.label_smoothing={label_smoothing} is invalid: it must be in [0, 1)")
    if label_smoothing and kind != "cross_entropy":
        raise ConfigError(f"dataset.label_smoothing={label_smoothing} applies to cross-entropy only, not to {kind!r}")
    if kind == "cross_entropy" and label_smoothing:
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=label_smoothing)
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
    `after_backward(model)`, when given, runs right after `loss.backward()` (gradient averaging over ranks);
    `micro_batches` = k > 1 accumulates the gradient over k micro-batches (item 4 of the module docstring).
    """

    def __init__(self, model, inputs, targets, loss_fn, regularizer=None, grad_clip=None, autocast=None, after_backward=None,
                 micro_batches=1):
        self.model, self.inputs, self.targets = model, inputs, targets
        self.loss_fn, self.regularizer, self.grad_clip = loss_fn, regularizer, grad_clip
        self.autocast, self.after_backward = autocast, after_backward
        self.rng_state = torch.random.get_rng_state()
        self.cuda_rng_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.data_loss = None  # the loss without the regularizer, from the first call
        self.micro_batches = int(micro_batches)
        self.parts = micro_batch_parts(inputs, targets, self.micro_batches) if self.micro_batches > 1 else None

    def __call__(self, backward=True):
        torch.random.set_rng_state(self.rng_state)
        if self.cuda_rng_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng_state)
        if self.parts is not None:
            return self._accumulated(backward)
        if not backward and self.grad_clip:
            warnings.warn(f"trainer.grad_clip={self.grad_clip} is not applied: the optimizer differentiates the loss "
                          "itself (closure(backward=False)). Set trainer.grad_clip=null and use the optimizer's own "
                          "clipping (PSGD: optimizer.grad_clip_max_norm).", UserWarning, stacklevel=2)
        if backward:
            self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            data_loss = self._data_loss(self.inputs, self.targets)
            loss = data_loss if self.regularizer is None else data_loss + self.regularizer(self.model)
        if self.data_loss is None:
            self.data_loss = data_loss.detach()
        if backward:
            loss.backward()
            self._after_backward()
        return loss

    def _data_loss(self, inputs, targets):
        if self.autocast is not None:
            with self.autocast():
                return self.loss_fn(self.model(inputs), targets).float()
        return self.loss_fn(self.model(inputs), targets)

    def _accumulated(self, backward):
        """Backward on each micro-batch's share of the batch-mean loss, then once through the regularizer."""
        if not backward:
            raise ConfigError(
                f"trainer.grad_accumulation={self.micro_batches} cannot be used with this optimizer: it differentiates the "
                "loss itself (closure(backward=False)), which needs the whole batch's graph at once. Set "
                "trainer.grad_accumulation=1 (the step's batch, dataset.batch_size, stays the same) and lower "
                "dataset.batch_size if it does not fit in memory.")
        self.model.zero_grad(set_to_none=True)
        data_loss = 0.0
        with torch.enable_grad():
            for inputs, targets, share in self.parts:
                part = share * self._data_loss(inputs, targets)
                part.backward()
                data_loss = data_loss + part.detach()
            loss = data_loss
            if self.regularizer is not None:
                penalty = self.regularizer(self.model)
                penalty.backward()
                loss = data_loss + penalty.detach()
        if self.data_loss is None:
            self.data_loss = data_loss
        self._after_backward()
        return loss

    def _after_backward(self):
        if self.after_backward is not None:  # data parallel: average the gradients over ranks
            self.after_backward(self.model)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)


def micro_batch_parts(inputs, targets, k):
    """[(inputs_i, targets_i, share_i)] for k micro-batches along dim 0 (torch.tensor_split: sizes differ by at most
    one). share_i = n_i / Σ n_j, with n the number of terms a batch-mean loss averages (`loss_terms`), so that
    Σ share_i · loss_i is the whole batch's mean loss, padded token batches included."""
    size = leading_size(inputs)
    if size < k:
        raise ConfigError(f"trainer.grad_accumulation={k} is more than the {size} samples of the step's batch; lower it "
                          "or raise dataset.batch_size")
    pieces = list(zip(split_batch(inputs, k), split_batch(targets, k)))
    counts = [loss_terms(x, y) for x, y in pieces]
    total = sum(counts)
    return [(x, y, n / total if total else 1.0 / k) for (x, y), n in zip(pieces, counts)]


def loss_terms(inputs, targets):
    """How many terms a batch-mean loss averages: the counted targets (integer targets other than IGNORE_INDEX),
    every entry of float targets, else the samples."""
    if torch.is_tensor(targets):
        if targets.is_floating_point():
            return targets.numel()
        return int((targets != IGNORE_INDEX).sum())
    return leading_size(inputs)


def split_batch(batch, k):
    """k pieces of a batch (a tensor, or a tuple/list/dict of them; None stays None) along dim 0."""
    if batch is None:
        return [None] * k
    if torch.is_tensor(batch):
        return list(torch.tensor_split(batch, k))
    if isinstance(batch, dict):
        parts = {key: split_batch(value, k) for key, value in batch.items()}
        return [{key: parts[key][i] for key in batch} for i in range(k)]
    if isinstance(batch, (tuple, list)):
        parts = [split_batch(value, k) for value in batch]
        return [type(batch)(part[i] for part in parts) for i in range(k)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into micro-batches")


def leading_size(batch):
    if torch.is_tensor(batch):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch
    return leading_size(next(iter(values)))


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


def build_optimizer(cfg, model, loss_kind, sample_batch, label_smoothing=0.0):
    """Instantiate `cfg` (a `_target_` config) with the protocol keywords its constructor accepts (`model`,
    `loss`, `sample_batch`, and `label_smoothing` when the training loss is label-smoothed).

    `optimizer.weight_decay_on` (ours, not the optimizer's) picks the parameters `weight_decay` applies to; see
    `parameter_groups`. An optimizer class with a `supported_losses` attribute (LLQR: the losses whose output
    curvature it knows) refuses any other loss kind with `UnsupportedLossError`."""
    target = hydra.utils.get_class(cfg["_target_"])
    _validate_step_sizes(cfg)
    supported = getattr(target, "supported_losses", None)
    if supported is not None and loss_kind not in supported:
        raise UnsupportedLossError(f"optimizer {cfg['_target_']} needs the output curvature of a {' / '.join(supported)} "
                                   f"loss; this model's loss kind is {loss_kind!r}")
    decay_on = cfg.get("weight_decay_on", "all")
    if "weight_decay_on" in cfg:
        cfg = _without(cfg, "weight_decay_on")
    accepted = inspect.signature(target.__init__).parameters
    extras = {"model": model, "loss": loss_kind, "sample_batch": sample_batch}
    if label_smoothing and "label_smoothing" not in cfg:  # an explicit optimizer.label_smoothing wins
        extras["label_smoothing"] = label_smoothing
    extras = {key: value for key, value in extras.items() if key in accepted}
    params = parameter_groups(model, decay_on, cfg.get("weight_decay"))
    try:
        return hydra.utils.instantiate(cfg, params, **extras, _convert_="all")
    except Exception as error:  # Hydra wraps the constructor's ValueError; report its message on one line
        cause = error.__cause__ or error
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
        if unexpected:  # typically a key an experiment preset set for another optimizer (e.g. AdamW's betas)
            key = unexpected.group(1)
            raise ConfigError(f"optimizer.{key} is not an argument of {cfg['_target_']} (a preset may have set it for "
                              f"another optimizer): remove it with ~optimizer.{key}") from error
        raise ConfigError(f"optimizer {cfg['_target_']}: {cause}") from error


DECAY_CHOICES = ("all", "matrices", "linear_weights")


def parameter_groups(model, decay_on="all", weight_decay=None):
    """The trainable parameters, as one list (`decay_on="all"`: the optimizer decays every parameter), or as two
    param groups, decayed then not, nanoGPT's `configure_optimizers`:
    - "matrices": every tensor with >= 2 dims (weights of Linear, Conv and Embedding; not biases or norms), current
      nanoGPT (configs/experiment/shakespeare_char.yaml, owt_gpt2.yaml);
    - "linear_weights": only nn.Linear weights, never an Embedding's (a tied LM head included), the earlier
      nanoGPT that nanoGPT-PSGD forked (its model.py, configs/experiment/table5_*.yaml)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on not in DECAY_CHOICES:
        raise ConfigError(f"optimizer.weight_decay_on={decay_on!r} is invalid; choose one of {list(DECAY_CHOICES)}")
    if decay_on == "all":
        return params
    if weight_decay is None:
        raise ConfigError(f"optimizer.weight_decay_on={decay_on!r} needs an optimizer config with a weight_decay key")
    if decay_on == "matrices":
        decayed = {id(p) for p in params if p.ndim >= 2}
    else:
        decayed = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
        decayed -= {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _without(cfg, key):
    if OmegaConf.is_config(cfg):  # resolve first: a detached copy loses the root that ${seed} points to
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in cfg.items() if k != key}


def _validate_step_sizes(cfg):
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key in ("lr", "weight_decay", "momentum", "lr_preconditioner"):
        value = plain.get(key)
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"optimizer.{key}={value} is invalid: it must be >= 0")
