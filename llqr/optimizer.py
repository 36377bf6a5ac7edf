"""LLQR, the relaxed learned-preconditioner optimizer (llqr_spec.md §4, §6), as a ``torch.optim.Optimizer``."""
from __future__ import annotations

import torch
from torch.optim.adam import adam as _adam
from torch.optim.optimizer import _get_scalar_dtype
from torch.optim.sgd import sgd as _sgd

from llqr.objective import DIVERGENCES, LOSSES, LQRObjective
from llqr.refit import Block, controls, fit_preconditioner, identity_efficiency
from llqr.structures import STRUCTURES, make_structure
from llqr.tangent import LinearizationCache

BASES = ("sgd", "adam", "adamw")
MODES = ("paper", "engineered")
POSITIVE_FLOOR = 1e-8  # [C] diag/scalar U clipped ≥ 1e-8 (`allow_grad_inversion: false`)


class LLQR(torch.optim.Optimizer):
    r"""Layerwise LQR with a learned structured inverse preconditioner U (llqr_spec.md §4).

    Every ``update_preconditioner_every`` steps (``step % T == 0``, step 0 included, before that step's
    update [C] `run.py`) U is refitted on its own batch by minimising the LQR objective
    J(U) = gᵀu + ½uᵀ(M + λI)u at u = U(−g) (§4.1 [C]) with ``precond_steps`` steps of SGD-momentum 0.9
    (``precond_lr``, each leaf's gradient clipped to ``precond_clip``) from the current U (warm start) [C];
    then U ← β·U_old + (1−β)·U_T on each factor array (``ema_decay`` = β) [C] and diagonal/scalar U are
    clipped to ≥ 1e-8 [C]. Every step the base method receives U·g [C][P] ("LLQR wraps standard methods"):
    ``base="sgd"`` (momentum), ``"adam"``, or ``"adamw"``. Coupled weight decay (sgd, adam) is added to U·g
    *after* preconditioning (optax ``add_decayed_weights`` before the base optimizer, §4.4 [C]) and can be
    masked off 1-D parameters (norm scales, biases) with ``wd_exclude_norm_and_bias`` ([C] `wd_mask`); "adamw"
    is decoupled (``optax.adamw``) [C].

    Geometry (``divergence``): "ngd" — the authors' natural gradient, the batch-**sum** Fisher beside the
    batch-mean gradient [C]; "gauss_newton" — the GGN of the mean loss [R]; "newton" — the Hessian of the
    mean loss [C], by double backward (issue 5 §4). ``damping`` λ adds λI [C].

    Structures (``block_structure``): "diagonal" (default [C]), "scalar", "kfac", "e-kfac", "dense" (tiny
    problems); biases and norm parameters are diagonal in every structure [C]. One block per module (each
    Linear/Conv/Embedding/norm layer is its own controlled stage, §5 [C]); the table printed at construction
    says which layer got which structure. Note [R]: with an Adam base, a positive diagonal or scalar U held fixed
    between refits cancels in m/√v (up to ε and coupled weight decay), so only its changes at refits act; U that
    mix coordinates (kfac, e-kfac, dense) are not cancelled.

    ``mode="paper"`` is the authors' algorithm. ``mode="engineered"`` turns on the spec's safeguards [E]
    (§4.6), each also settable alone: ``scale_free`` (divide ∂J/∂φ by λ_max(M+λI)·‖d‖², use precond_lr ≈ 1),
    ``refit_acceptance`` (keep a refit only if it lowers J on its batch), ``reuse_diagnostic`` (log, before each
    refit, the model-decrease efficiency of the stale U over that of U = I; > 1 means U helps).

    ``cached_linearization`` (default on) traces the refit forward's JVP once per batch shape and reuses its
    tangent half at every inner step, as the authors' ``jax.linearize`` [C]; the products are those of the eager
    ``torch.func.jvp`` to the bit, and the eager path is used whenever the trace does not reproduce them
    (llqr/tangent.py) [E]. The first refit of each shape pays the trace (seconds). ``"compiled"`` also compiles
    the tangent graph with ``torch.compile`` [E]: J·u to a tolerance instead of to the bit, a compilation (tens
    of seconds on CPU) at the first refit of each shape, then inner steps up to 2x faster on transformers.

    ``label_smoothing`` ε: the refit's g is the gradient of the label-smoothed cross-entropy, as the training
    loss's (the authors' final cost with label smoothing [C]); the training loop passes its dataset's ε.

    Refit batches come from ``sample_batch(precond_batch_size)`` when given (the training loop's protocol),
    else from the closure's batch (``closure.inputs``, ``closure.targets``, first ``precond_batch_size`` rows).
    A refit runs the model in its current mode through ``torch.func.functional_call`` with cloned buffers
    (BatchNorm uses batch statistics; its running statistics are untouched [E]) and with the RNG state pinned
    (dropout masks fixed within a refit, the training RNG stream unchanged [E]).

    In your own loop::

        opt = LLQR(model.parameters(), model=model, lr=0.05, momentum=0.9, update_preconditioner_every=250)
        for x, y in loader:
            def closure():
                opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
            closure.inputs, closure.targets = x, y
            opt.step(closure)
    """

    supported_losses = LOSSES  # the loss kinds whose output curvature a refit uses (the training loop checks it)

    def __init__(self, params, model=None, loss="cross_entropy", sample_batch=None, base="sgd", lr=0.1,
                 momentum=0.9, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, wd_exclude_norm_and_bias=False,
                 block_structure="diagonal", divergence="ngd", update_preconditioner_every=1000,
                 update_preconditioner_until=None, precond_steps=50, precond_batch_size=None, precond_lr=1e-3,
                 precond_clip=5.0, precond_momentum=0.9, ema_decay=0.0, damping=0.0, warm_start=True,
                 max_factor_dim=4096, mode="paper", scale_free=None, refit_acceptance=None,
                 reuse_diagnostic=None, cached_linearization=True, label_smoothing=0.0, verbose=True):
        _validate(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay, base=base,
                  loss=loss, label_smoothing=label_smoothing, block_structure=block_structure, divergence=divergence,
                  update_preconditioner_every=update_preconditioner_every, precond_steps=precond_steps,
                  precond_batch_size=precond_batch_size, precond_lr=precond_lr, precond_clip=precond_clip,
                  precond_momentum=precond_momentum, ema_decay=ema_decay, damping=damping, mode=mode,
                  cached_linearization=cached_linearization)
        defaults = dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        precond_lr=precond_lr, ema_decay=ema_decay)
        super().__init__(params, defaults)
        self.model, self.loss, self.sample_batch, self.base = model, loss, sample_batch, base
        self.label_smoothing = float(label_smoothing)
        self.wd_exclude_norm_and_bias = bool(wd_exclude_norm_and_bias)
        self.block_structure, self.divergence = block_structure, divergence
        self.update_preconditioner_every = int(update_preconditioner_every)
        self.update_preconditioner_until = update_preconditioner_until
        self.precond_steps, self.precond_batch_size = int(precond_steps), precond_batch_size
        self.precond_clip, self.precond_momentum = precond_clip, precond_momentum
        self.damping, self.warm_start, self.mode = float(damping), bool(warm_start), mode
        engineered = mode == "engineered"
        self.scale_free = engineered if scale_free is None else bool(scale_free)
        self.refit_acceptance = engineered if refit_acceptance is None else bool(refit_acceptance)
        self.reuse_diagnostic = engineered if reuse_diagnostic is None else bool(reuse_diagnostic)
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._linearization_cache = (LinearizationCache(compile=cached_linearization == "compiled")
                                     if cached_linearization else None)
        self._blocks = _build_blocks(model, self._params, block_structure, max_factor_dim)
        for block in self._blocks:
            first = self._params[block.index[0]]
            self.state[first]["precond"] = block.structure.identity(first.device, first.dtype)
        self.state[self._params[0]]["llqr"] = {"step": 0, "refits": 0, "history": []}
        if verbose:
            print(self.describe())

    # -- introspection -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The kfac-jax style table: which layer got which structure."""
        rows = [("layer", "type", "params", "structure")]
        for b in self._blocks:
            n = sum(self._params[i].numel() for i in b.index)
            rows.append((b.name, b.module_type, str(n), b.structure.describe()))
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"LLQR: base={self.base}, divergence={self.divergence}, block_structure={self.block_structure}, "
                 f"refit every {self.update_preconditioner_every} steps x {self.precond_steps} inner steps, "
                 f"mode={self.mode}"]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        return "\n".join(lines)

    @property
    def llqr_state(self) -> dict:
        """Counters and refit diagnostics (step, refits, history of per-refit records)."""
        return self.state[self._params[0]]["llqr"]

    def preconditioner_factors(self) -> list[dict]:
        """The current factors of U, one dict per block (block order of :meth:`describe`)."""
        return [self.state[self._params[b.index[0]]]["precond"] for b in self._blocks]

    def precondition(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """U·v for a list of tensors shaped like the optimizer's parameters (in their order)."""
        return controls(self._blocks, self.preconditioner_factors(), vectors)

    # -- refit ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refit(self, inputs, targets, model=None, record=False):
        """Refit U on (inputs, targets) (spec §4.4 [C]); returns the refit's record (J values, diagnostics)."""
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("LLQR needs the model to refit its preconditioner: pass model=... or a closure with "
                             "closure.model.")
        group = self.param_groups[0]
        device = self._params[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            objective = LQRObjective(model, self._params, self.loss, inputs, targets, self.divergence, self.damping,
                                     linearization_cache=self._linearization_cache,
                                     label_smoothing=self.label_smoothing)
            old = self.preconditioner_factors()
            start = old if self.warm_start else [b.structure.identity(device, self._params[b.index[0]].dtype)
                                                 for b in self._blocks]
            result = fit_preconditioner(self._blocks, start, objective, self.precond_steps, group["precond_lr"],
                                        self.precond_clip, self.precond_momentum, self.scale_free, record=record,
                                        final_value=self.refit_acceptance)
            entry = {"step": self.llqr_state["step"], "loss": float(objective.loss_value)}
            if self.reuse_diagnostic:  # [E] e(U_stale)/e(I) > 1 iff the stale U beats the identity
                entry["reuse_ratio"] = result.efficiency / identity_efficiency(objective)
        accepted = True
        if self.refit_acceptance:  # [E] keep φ_T only if it lowers J on the refit batch
            j_start = result.J[0] if record else float(objective.value(
                controls(self._blocks, start, [-g for g in objective.g])))
            accepted = result.J[-1] < j_start
            entry["accepted"] = accepted
        if record:
            entry["J"] = list(result.J)
        if accepted:
            self._commit(result.factors, group["ema_decay"])
        self.llqr_state["refits"] += 1
        self.llqr_state["history"].append(entry)
        return entry

    def _commit(self, new_factors, beta):
        for block, new in zip(self._blocks, new_factors):
            state = self.state[self._params[block.index[0]]]
            old = state["precond"]
            merged = {}
            for key, value in new.items():
                value = beta * old[key] + (1.0 - beta) * value if beta else value  # EMA per factor array [C]
                if block.structure.positive:
                    value = value.clamp(min=POSITIVE_FLOOR)  # [C] no gradient-sign inversion
                merged[key] = value
            state["precond"] = merged

    def _refit_due(self, step):
        until = self.update_preconditioner_until
        return step % self.update_preconditioner_every == 0 and (until is None or step < until)

    def _refit_batch(self, closure):
        if self.sample_batch is not None:
            return self.sample_batch(self.precond_batch_size)
        inputs, targets = getattr(closure, "inputs", None), getattr(closure, "targets", None)
        if inputs is None or targets is None:
            raise ValueError("LLQR refits on a batch: pass sample_batch=... or a closure with closure.inputs and "
                             "closure.targets.")
        if self.precond_batch_size is not None:
            inputs, targets = inputs[: self.precond_batch_size], targets[: self.precond_batch_size]
        return inputs, targets

    # -- step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Refit U when due (before the update, spec §4.4), evaluate ``closure`` (backward), step on U·g."""
        counters = self.llqr_state
        if self._refit_due(counters["step"]) and self.precond_steps > 0:
            if closure is None and self.sample_batch is None:
                raise ValueError("LLQR needs a closure (or sample_batch) on refit steps.")
            model = getattr(closure, "model", None)
            self.refit(*self._refit_batch(closure), model=self.model if model is None else model)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        preconditioned = self.precondition(grads)  # p ← U g [C]
        updates = {id(p): u for p, u in zip(self._params, preconditioned)}
        for group in self.param_groups:
            self._base_step(group, updates)
        counters["step"] += 1
        return loss

    def _base_step(self, group, updates):
        """The base optimizer on U·g: torch.optim's own functional SGD/Adam/AdamW, so U = I is exactly it."""
        decay, no_decay = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            excluded = self.wd_exclude_norm_and_bias and p.ndim <= 1  # [C] `wd_mask` on Norm / bias
            (no_decay if excluded else decay).append(p)
        for params, wd in ((decay, group["weight_decay"]), (no_decay, 0.0)):
            if params:
                grads = [updates[id(p)] for p in params]
                if self.base == "sgd":
                    self._sgd(params, grads, group, wd)
                else:
                    self._adam(params, grads, group, wd)

    def _sgd(self, params, grads, group, wd):
        momentum = group["momentum"]
        bufs = [self.state[p].get("momentum_buffer") for p in params]
        _sgd(params, grads, bufs, weight_decay=wd, momentum=momentum, lr=group["lr"], dampening=0.0,
             nesterov=False, maximize=False)
        if momentum > 0:
            for p, buf in zip(params, bufs):
                self.state[p]["momentum_buffer"] = buf

    def _adam(self, params, grads, group, wd):
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())  # as torch.optim.Adam
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        _adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
              [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=wd, eps=group["eps"], maximize=False, decoupled_weight_decay=self.base == "adamw")


def _build_blocks(model, params, kind, max_factor_dim):
    """One block per module that owns optimizer parameters (§5 [C]); parameters not found are their own block."""
    position = {id(p): i for i, p in enumerate(params)}
    seen, blocks = set(), []
    if model is not None:
        for mod_name, module in model.named_modules():
            named = [(n, p) for n, p in module.named_parameters(recurse=False)
                     if id(p) in position and id(p) not in seen]
            if not named:
                continue
            seen.update(id(p) for _, p in named)
            structure = make_structure(kind, [n for n, _ in named], [p.shape for _, p in named], max_factor_dim)
            blocks.append(Block(mod_name or "<root>", type(module).__name__,
                                [position[id(p)] for _, p in named], structure))
    for i, p in enumerate(params):
        if id(p) not in seen:
            structure = make_structure(kind, ["param"], [p.shape], max_factor_dim)
            blocks.append(Block(f"param{i}", "Parameter", [i], structure))
    return blocks


def _validate(*, lr, momentum, betas, eps, weight_decay, base, loss, label_smoothing, block_structure, divergence,
              update_preconditioner_every, precond_steps, precond_batch_size, precond_lr, precond_clip,
              precond_momentum, ema_decay, damping, mode, cached_linearization):
    """Argument checks with exact messages (developers' guide)."""
    if cached_linearization not in (True, False, "compiled"):
        raise ValueError(f"Invalid cached_linearization: {cached_linearization!r}. Must be True, False or 'compiled'.")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}. Must be >= 0.0.")
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}. Must be >= 0.0.")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}. Must be in [0, 1).")
    if eps < 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}. Must be >= 0.0.")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}. Must be >= 0.0.")
    for name, value, allowed in (("base", base, BASES), ("loss", loss, LOSSES),
                                 ("block_structure", block_structure, STRUCTURES),
                                 ("divergence", divergence, DIVERGENCES), ("mode", mode, MODES)):
        if value not in allowed:
            raise ValueError(f"Invalid {name}: {value}. Must be one of {allowed}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"Invalid label_smoothing: {label_smoothing}. Must be in [0, 1).")
    if label_smoothing and loss != "cross_entropy":
        raise ValueError(f"Invalid label_smoothing: {label_smoothing} with loss {loss!r}. Label smoothing applies "
                         "to loss='cross_entropy' only.")
    if not isinstance(update_preconditioner_every, int) or update_preconditioner_every < 1:
        raise ValueError(f"Invalid update_preconditioner_every: {update_preconditioner_every}. "
                         "Must be an integer >= 1.")
    if not isinstance(precond_steps, int) or precond_steps < 0:
        raise ValueError(f"Invalid precond_steps: {precond_steps}. Must be an integer >= 0.")
    if precond_batch_size is not None and (not isinstance(precond_batch_size, int) or precond_batch_size < 1):
        raise ValueError(f"Invalid precond_batch_size: {precond_batch_size}. Must be None or an integer >= 1.")
    if precond_lr < 0.0:
        raise ValueError(f"Invalid precond_lr: {precond_lr}. Must be >= 0.0.")
    if precond_clip is not None and precond_clip <= 0.0:
        raise ValueError(f"Invalid precond_clip: {precond_clip}. Must be None or > 0.0.")
    if precond_momentum < 0.0:
        raise ValueError(f"Invalid precond_momentum: {precond_momentum}. Must be >= 0.0.")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"Invalid ema_decay: {ema_decay}. Must be in [0, 1).")
    if damping < 0.0:
        raise ValueError(f"Invalid damping: {damping}. Must be >= 0.0.")
