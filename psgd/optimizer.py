"""PSGD: preconditioned SGD with Lie-group preconditioners (Pooladzandi & Li, arXiv 2402.04553; Li 2015/2019/2022).

A `torch.optim.Optimizer` whose paper-era mode reproduces the reference implementation
(lixilinx/psgd_torch @ f0fa983, classes UVd / XMat / Newton) operation for operation, including the order of
its random draws (psgd_notes.md §2). Later versions' ideas are explicit options, off by default.
"""

import copy
import math

import torch

from psgd import kron, lra, newton, xmat
from psgd.probes import call_closure, exact_hvp, gradients
from psgd.random_source import RandomSource

PRECONDITIONERS = ("xmat", "lra", "diag", "newton", "kron")
_FLAT = ("xmat", "lra", "diag", "newton")  # one preconditioner on the concatenation of a group's parameters
_HALF = (torch.float16, torch.bfloat16)


def _state_dtype(dtype):
    """Preconditioner state stays in float32 for half-precision parameters (the reference would keep it in the
    parameter dtype; our choice, as the later versions do)."""
    return torch.float32 if dtype in _HALF else dtype


class PSGD(torch.optim.Optimizer):
    """PSGD with a diagonal, X-shape, low-rank (UVd), dense Newton or Kronecker-product preconditioner.

    Args (defaults are the paper-era reference defaults, psgd_notes.md §3.6 first column):
        preconditioner: "xmat" (Q = diag(a) + adiag(b)), "lra" (Q = (I + UVᵀ)diag(d), rank `rank`), "diag"
            (LRA with rank 0), "newton" (dense upper-triangular Q) or "kron" (Li 2019, one per parameter).
        lr: normalised parameter step size (`lr_params` of the reference).
        lr_preconditioner: normalised step size of Q on its Lie group, in [0, 1).
        rank: rank of U and V for "lra" (ignored otherwise).
        momentum: β of the EMA m ← βm + (1 − β)g (no bias correction), preconditioned instead of g.
        grad_clip_max_norm: clip the global 2-norm of the preconditioned gradient (of each group) to this.
        preconditioner_update_probability: probability of a preconditioner update (and HVP) per step.
        preconditioner_init_scale: Q starts as this times the identity.
        exact_hessian_vector_product: True: double backward; False: finite differences of gradients.
      Options from later versions (off by default; psgd_notes.md §3.7):
        step_normalizer: "1st" (paper: μ = lr_p/max|∇|) or "2nd" (2024 second-order normaliser).
        preconditioner_type: "newton" (fit P to the Hessian, the paper) or "whitening" (pair (v, g): P → E[ggᵀ]^(-1/2)).
        update_probability_schedule: None, or "exp_decay": 1 for 500 steps, then max(0.03, exp(−0.001(t − 500))),
            kron_torch's schedule, used in place of preconditioner_update_probability.
        weight_decay: decoupled decay θ ← θ − lr·weight_decay·θ (the paper puts L2 in the loss; see
            `psgd.random_l2`).
        kron_max_dense_size: largest side of a dense Kronecker factor; larger sides get a diagonal factor (or the
            "normalization" factor on a side that carries a folded bias; psgd/kron.py).
        kron_fold_bias: with `model` given, a module's bias joins its weight's Kronecker block as a last column
            (Li's affine demos); otherwise biases get their own diagonal preconditioner.
        model: the nn.Module (the training loop passes it); only used to pair weights with biases for "kron".
        rng_seed: None draws from torch's global generators as the reference (the caller restores them to resume);
            an integer gives the optimizer private generators, saved in its state_dict (see psgd/random_source.py).

    `step(closure)` calls `closure(backward=False)` (or `closure()` for a closure without that argument), which
    must return the loss with its graph; PSGD differentiates it itself. With finite differences the closure is
    called twice and must compute the same function both times (same dropout masks, same random L2).
    Each parameter group has its own preconditioner; the update decision and the HVP mode
    (`preconditioner_update_probability`, `exact_hessian_vector_product`, `preconditioner_type`,
    `update_probability_schedule`) are read from the first group.
    """

    def __init__(self, params, preconditioner="xmat", lr=0.01, lr_preconditioner=0.01, rank=10, momentum=0.0,
                 grad_clip_max_norm=None, preconditioner_update_probability=1.0, preconditioner_init_scale=1.0,
                 exact_hessian_vector_product=True, step_normalizer="1st", preconditioner_type="newton",
                 update_probability_schedule=None, weight_decay=0.0, kron_max_dense_size=1024, kron_fold_bias=True,
                 rng_seed=None, model=None):
        _validate(preconditioner, lr, lr_preconditioner, rank, momentum, grad_clip_max_norm,
                  preconditioner_update_probability, preconditioner_init_scale, step_normalizer,
                  preconditioner_type, update_probability_schedule, weight_decay, kron_max_dense_size, rng_seed)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__}. Must be None or a torch.nn.Module.")
        defaults = dict(preconditioner=preconditioner, lr=lr, lr_preconditioner=lr_preconditioner, rank=rank,
                        momentum=momentum, grad_clip_max_norm=grad_clip_max_norm,
                        preconditioner_update_probability=preconditioner_update_probability,
                        preconditioner_init_scale=preconditioner_init_scale,
                        exact_hessian_vector_product=exact_hessian_vector_product, step_normalizer=step_normalizer,
                        preconditioner_type=preconditioner_type, update_probability_schedule=update_probability_schedule,
                        weight_decay=weight_decay, kron_max_dense_size=kron_max_dense_size,
                        kron_fold_bias=kron_fold_bias)
        self._rng, self._model = RandomSource(rng_seed), model
        self._xmat_coefficients = {}  # per group: P's diagonals between preconditioner updates (not state)
        super().__init__(params, defaults)  # add_param_group builds each group's preconditioner, in group order
        self.state[self.param_groups[0]["params"][0]]["psgd_step"] = 0

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # the reference drops parameters that do not require grad ("double check requires_grad flag")
        group["params"] = [p for p in group["params"] if p.requires_grad]
        if not group["params"]:
            raise ValueError("PSGD got a parameter group without parameters that require grad.")
        self._init_group(group, self._model)  # at construction, as the reference (LRA draws U, V here: notes §2.2)

    # ----------------------------------------------------------------------------------------------------------
    # state

    def _init_group(self, group, model):
        kind = group["preconditioner"]
        params = group["params"]
        if kind == "kron":
            group["kron_blocks"] = _kron_blocks(params, model if group["kron_fold_bias"] else None)
            for block in group["kron_blocks"]:
                members = [params[i] for i in block]
                state = kron.init_state(members, len(block) == 2, group["preconditioner_init_scale"],
                                        group["kron_max_dense_size"], _state_dtype(members[0].dtype))
                self.state[members[0]].update(state)
            return
        n = sum(p.numel() for p in params)
        dtype, device = _state_dtype(params[0].dtype), params[0].device
        scale = group["preconditioner_init_scale"]
        if kind in ("lra", "diag"):
            rank = group["rank"] if kind == "lra" else 0
            state = lra.init_state(n, rank, scale, dtype, device, self._rng)
        elif kind == "xmat":
            state = xmat.init_state(n, scale, dtype, device)
        else:
            state = newton.init_state(n, scale, dtype, device)
        self.state[params[0]].update(state)

    def preconditioner_state(self, group_index=0):
        """The tensors of one group's preconditioner (a, b / U, V, d / Q; for "kron" a list, one per block)."""
        group = self.param_groups[group_index]
        if group["preconditioner"] == "kron":
            keys = ("Ql", "Qr", "Ql_kind", "Qr_kind")
            return [{k: self.state[group["params"][b[0]]][k] for k in keys} for b in group["kron_blocks"]]
        keys = {"xmat": ("a", "b"), "lra": ("U", "V", "d"), "diag": ("U", "V", "d"), "newton": ("Q",)}
        return {k: self.state[group["params"][0]][k] for k in keys[group["preconditioner"]]}

    def preconditioner_diagonal(self, group_index=0):
        """diag(P), P = QᵀQ, of one group, one tensor per parameter in its shape (what P does to each coordinate:
        for a scalar P = c·I every entry is c). Computed in closed form from Q, never forming P."""
        group = self.param_groups[group_index]
        params = group["params"]
        if group["preconditioner"] != "kron":
            return _split(p_diagonal_of(self.state[params[0]]), params)
        out = [None] * len(params)
        for block in group["kron_blocks"]:
            members = [params[i] for i in block]
            diagonal = kron.p_diagonal(self.state[members[0]])
            for i, d in zip(block, kron.split_block(diagonal, members, len(block) == 2)):
                out[i] = d
        return out

    def state_dict(self):
        state = super().state_dict()
        state["psgd_rng"] = self._rng.state()
        return state

    def load_state_dict(self, state_dict):
        """Load, keeping the saved values as they are (torch would cast the float32 state of half-precision parameters
        to their dtype)."""
        state_dict = dict(state_dict)
        rng_states = state_dict.pop("psgd_rng", {})
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            param = params[index]
            for key, value in saved.items():  # torch also turns strings (the Kron factor formats) into garbage
                if torch.is_tensor(value):
                    self.state[param][key] = value.to(device=param.device, copy=True)
                else:
                    self.state[param][key] = copy.deepcopy(value)
        self._rng.load_state(rng_states)

    # ----------------------------------------------------------------------------------------------------------
    # step

    def _update_probability(self):
        options = self.param_groups[0]
        if options["update_probability_schedule"] == "exp_decay":
            t = self.state[options["params"][0]]["psgd_step"]
            return max(0.03, math.exp(-0.001 * max(0, t - 500)))  # kron_torch's schedule (notes §3.6)
        return options["preconditioner_update_probability"]

    @torch.no_grad()
    def step(self, closure=None):
        """One PSGD step (psgd_notes.md §2.1); returns the loss of the first closure call (detached)."""
        if closure is None:
            raise RuntimeError("PSGD.step needs a closure that returns the loss (PSGD computes gradients itself).")
        options = self.param_groups[0]
        params = [p for group in self.param_groups for p in group["params"]]
        perturbations = None
        if self._rng.uniform() < self._update_probability():  # (R1) one CPU draw every step, as the reference
            if options["preconditioner_type"] == "whitening":
                returned, grads, vs, hs = self._whitening_pair(closure, params)
            elif options["exact_hessian_vector_product"]:
                returned, grads, vs, hs = self._exact_pair(closure, params)
            else:
                returned, grads, vs, hs, perturbations = self._finite_difference_pair(closure, params)
            self._update_preconditioners(vs, hs)
        else:
            returned, loss = call_closure(closure)
            grads = gradients(loss, params)
        self._update_parameters(grads, perturbations)
        self.state[options["params"][0]]["psgd_step"] += 1
        return returned.detach() if isinstance(returned, torch.Tensor) else returned

    def _exact_pair(self, closure, params):
        """(v, Hv) with v ~ N(0, I) drawn after the closure (R2) and Hv by double backward (notes §2.1)."""
        with torch.enable_grad():
            returned, loss = call_closure(closure, double_backward=True)
            grads = gradients(loss, params, create_graph=True)
            vs = [self._rng.randn_like(p) for p in params]
            hs = exact_hvp(grads, params, vs)
        return returned, grads, vs, hs

    def _whitening_pair(self, closure, params):
        """(v, g): the later versions' gradient-whitening pair; P tends to E[ggᵀ]^(-1/2) (notes §3.7, 2023-12)."""
        returned, loss = call_closure(closure)
        grads = gradients(loss, params)
        vs = [self._rng.randn_like(p) for p in params]
        return returned, grads, vs, grads

    def _finite_difference_pair(self, closure, params):
        """v = δ·N(0, I), h = g(θ + v) − g(θ), δ = sqrt(eps of the parameter dtype); both divided by δ before
        the preconditioner update (notes §0 item 3). The perturbation is removed with the parameter update."""
        returned, loss = call_closure(closure)
        grads = gradients(loss, params)
        deltas = [torch.finfo(p.dtype).eps ** 0.5 for p in params]
        vs = [delta * self._rng.randn_like(p) for p, delta in zip(params, deltas)]
        # half precision cannot undo θ + v − v exactly: keep θ (our choice; float32/64 follow the reference)
        saved = [p.clone() if p.dtype in _HALF else None for p in params]
        for p, v in zip(params, vs):
            p.add_(v)
        _, perturbed_loss = call_closure(closure)
        perturbed_grads = gradients(perturbed_loss, params)
        hs = [g2 - g for g2, g in zip(perturbed_grads, grads)]
        scaled_vs = [v / delta for v, delta in zip(vs, deltas)]
        scaled_hs = [h / delta for h, delta in zip(hs, deltas)]
        return returned, grads, scaled_vs, scaled_hs, (vs, saved)

    def _update_preconditioners(self, vs, hs):
        index = 0
        for group in self.param_groups:
            count = len(group["params"])
            group_vs, group_hs = vs[index:index + count], hs[index:index + count]
            index += count
            if group["preconditioner"] == "kron":
                self._update_kron(group, group_vs, group_hs)
            else:
                self._update_flat(group, group_vs, group_hs)

    def _update_flat(self, group, vs, hs):
        state = self.state[group["params"][0]]
        dtype = _state_dtype(group["params"][0].dtype)
        v, h = _flatten(vs, dtype), _flatten(hs, dtype)
        tiny, lr_p, normalizer = torch.finfo(dtype).tiny, group["lr_preconditioner"], group["step_normalizer"]
        kind = group["preconditioner"]
        if kind in ("lra", "diag"):
            lra.update(state, v[:, None], h[:, None], lr_p, tiny, self._rng, normalizer)
        elif kind == "xmat":
            xmat.update(state, v, h, lr_p, tiny, normalizer)
        else:
            newton.update(state, v[:, None], h[:, None], lr_p, tiny, normalizer)

    def _update_kron(self, group, vs, hs):
        for block in group["kron_blocks"]:
            first = group["params"][block[0]]
            dtype = _state_dtype(first.dtype)
            dX = kron.block_matrix([vs[i] for i in block], len(block) == 2).to(dtype)
            dG = kron.block_matrix([hs[i] for i in block], len(block) == 2).to(dtype)
            kron.update(self.state[first], dX, dG, group["lr_preconditioner"], torch.finfo(dtype).tiny,
                        group["step_normalizer"])

    def _update_parameters(self, grads, perturbations):
        index = 0
        for group in self.param_groups:
            count = len(group["params"])
            group_grads = grads[index:index + count]
            group_perturbations = None
            if perturbations is not None:
                group_perturbations = [x[index:index + count] for x in perturbations]
            index += count
            if group["preconditioner"] == "kron":
                steps, whole, tiny = self._kron_steps(group, group_grads)
            else:
                steps, whole, tiny = self._flat_steps(group, group_grads)
            self._apply(group, steps, whole, tiny, group_perturbations)

    def _flat_steps(self, group, grads):
        """The preconditioned (momentum) gradient P·g of the concatenated group, split back per parameter."""
        params = group["params"]
        state = self.state[params[0]]
        dtype = _state_dtype(params[0].dtype)
        g = _flatten(grads, dtype)
        m = self._momentum(group, state, g)
        kind = group["preconditioner"]
        if kind in ("lra", "diag"):
            pg = lra.precondition(state, m[:, None])
        elif kind == "xmat":
            pg = xmat.precondition(state, m, self._xmat_coefficients.setdefault(id(params[0]), xmat.Coefficients()))
        else:
            pg = newton.precondition(state, m)
        return _split(pg, params), pg, torch.finfo(dtype).tiny

    def _kron_steps(self, group, grads):
        params = group["params"]
        ms = [self._momentum(group, self.state[p], g.to(_state_dtype(p.dtype))) for p, g in zip(params, grads)]
        steps = [None] * len(params)
        for block in group["kron_blocks"]:
            members = [params[i] for i in block]
            pg = kron.precondition(self.state[members[0]], kron.block_matrix([ms[i] for i in block], len(block) == 2))
            for i, s in zip(block, kron.split_block(pg, members, len(block) == 2)):
                steps[i] = s
        whole = torch.cat([s.reshape(-1) for s in steps]) if group["grad_clip_max_norm"] is not None else None
        return steps, whole, torch.finfo(_state_dtype(group["params"][0].dtype)).tiny

    @staticmethod
    def _momentum(group, state, g):
        """m ← βm + (1 − β)g, first m = (1 − β)g, no bias correction (paper §E.2, notes §0 item 4)."""
        beta = group["momentum"]
        if beta > 0:
            if "momentum" not in state:
                state["momentum"] = (1 - beta) * g
            else:
                state["momentum"].mul_(beta).add_((1 - beta) * g)
            return state["momentum"]
        state.pop("momentum", None)  # the reference clears its buffer when momentum is set to zero
        return g

    @staticmethod
    def _apply(group, steps, whole, tiny, perturbations):
        """θ ← θ − lr_eff·Pg (− v in finite-difference steps), lr_eff = lr·min(clip/(‖Pg‖ + tiny), 1), with ‖Pg‖
        the 2-norm of the whole group's preconditioned gradient `whole` (notes §2.1). The reference's elementwise
        operations per parameter, batched as foreach calls."""
        lr = group["lr"]
        if group["grad_clip_max_norm"] is not None:
            norm = torch.linalg.vector_norm(whole) + tiny
            lr = group["lr"] * min(group["grad_clip_max_norm"] / norm, 1.0)
        params = group["params"]
        updates = torch._foreach_mul(steps, lr)
        decay = group["lr"] * group["weight_decay"]  # decoupled weight decay (option; not in the paper)
        if not decay and (perturbations is None or all(saved is None for saved in perturbations[1])):
            if perturbations is not None:
                torch._foreach_add_(updates, perturbations[0])  # also removes the finite-difference perturbation
            torch._foreach_sub_(params, updates)
            return
        for i, (p, update) in enumerate(zip(params, updates)):
            if perturbations is None:
                if decay:
                    update = update + decay * p
            elif perturbations[1][i] is None:
                v = perturbations[0][i]
                update = update + v  # also removes the finite-difference perturbation (reference)
                if decay:
                    update = update + decay * (p - v)
            else:
                p.copy_(perturbations[1][i])  # half precision: back to the saved θ
                if decay:
                    update = update + decay * p
            p.sub_(update)


def p_diagonal_of(state):
    """diag(P) from one preconditioner's state (as in a checkpoint's optimizer state), its kind told by its keys:
    a flat vector for xmat/lra/diag/newton, the block's matrix shape for kron; None for a state without one."""
    for key, module in (("a", xmat), ("U", lra), ("Q", newton), ("Ql", kron)):
        if key in state:
            return module.p_diagonal(state)
    return None


def _kron_blocks(params, model):
    """Index lists into `params`: [weight, bias] for each module of `model` whose weight (2 or more dims) and
    bias (their first dimension long) are both in `params`; [i] for every other parameter."""
    index = {id(p): i for i, p in enumerate(params)}
    paired = {}
    for module in (model.modules() if model is not None else ()):
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor) and id(weight) in index
                and id(bias) in index and weight.dim() >= 2 and bias.shape == weight.shape[:1]):
            paired[index[id(weight)]] = index[id(bias)]
    folded = set(paired.values())
    return [[i, paired[i]] if i in paired else [i] for i in range(len(params)) if i not in folded]


def _flatten(tensors, dtype):
    flat = torch.cat([torch.flatten(t) for t in tensors])
    return flat if flat.dtype == dtype else flat.to(dtype)


def _split(flat, params):
    """Views of the slices of `flat` in the parameters' shapes (flat may be an (n, 1) column)."""
    out, start = [], 0
    for p in params:
        out.append(flat[start:start + p.numel()].view_as(p))
        start += p.numel()
    return out


def _validate(preconditioner, lr, lr_preconditioner, rank, momentum, grad_clip_max_norm, update_probability,
              init_scale, step_normalizer, preconditioner_type, schedule, weight_decay, kron_max_dense_size, rng_seed):
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"Invalid preconditioner: {preconditioner!r}. Must be one of {', '.join(PRECONDITIONERS)}.")
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}. Must be >= 0.0.")
    if not 0.0 <= lr_preconditioner:
        raise ValueError(f"Invalid preconditioner learning rate: {lr_preconditioner}. Must be >= 0.0.")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"Invalid rank: {rank}. Must be an integer >= 0.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum: {momentum}. Must be in [0.0, 1.0).")
    if grad_clip_max_norm is not None and not grad_clip_max_norm > 0.0:
        raise ValueError(f"Invalid grad_clip_max_norm: {grad_clip_max_norm}. Must be None or > 0.0.")
    if not 0.0 <= update_probability <= 1.0:
        raise ValueError(f"Invalid preconditioner update probability: {update_probability}. Must be in [0.0, 1.0].")
    if not init_scale > 0.0:
        raise ValueError(f"Invalid preconditioner init scale: {init_scale}. Must be > 0.0.")
    if step_normalizer not in ("1st", "2nd"):
        raise ValueError(f"Invalid step_normalizer: {step_normalizer!r}. Must be '1st' or '2nd'.")
    if preconditioner_type not in ("newton", "whitening"):
        raise ValueError(f"Invalid preconditioner_type: {preconditioner_type!r}. Must be 'newton' or 'whitening'.")
    if schedule not in (None, "exp_decay"):
        raise ValueError(f"Invalid update_probability_schedule: {schedule!r}. Must be None or 'exp_decay'.")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}. Must be >= 0.0.")
    if isinstance(kron_max_dense_size, bool) or not isinstance(kron_max_dense_size, int) or kron_max_dense_size < 1:
        raise ValueError(f"Invalid kron_max_dense_size: {kron_max_dense_size}. Must be an integer >= 1.")
    if rng_seed is not None and (isinstance(rng_seed, bool) or not isinstance(rng_seed, int)):
        raise ValueError(f"Invalid rng_seed: {rng_seed}. Must be None or an integer.")
