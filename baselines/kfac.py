"""K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) as a torch.optim.Optimizer.

The algorithm is the one of baselines_notes.md §1.4, modelled on kfac-pytorch's single-device preconditioner
with alecwangcq's (KFC) factor scaling:

1. on factor-update steps, forward hooks capture the layers' inputs and output gradients during the closure's
   forward/backward, and the factors follow A ← ε·A + (1−ε)·Â, G ← ε·G + (1−ε)·Ĝ (A = G = I at start);
2. on inverse-update steps, A = Q_A diag(d_A) Q_Aᵀ and G = Q_G diag(d_G) Q_Gᵀ by eigh;
3. every step, each layer's gradient V becomes (A⊗G + λI)⁻¹V (or the π-damped factored form), all of them
   scaled by the KL-clip factor ν = min(1, sqrt(κ / |η² Σ⟨V', V⟩|)) (Ba, Grosse & Martens 2017);
4. SGD with momentum (coupled weight decay added after preconditioning, as kfac-pytorch) updates every
   parameter; parameters of layers K-FAC cannot handle get the plain SGD-momentum step.

Usage in any loop: `opt = KFAC(model.parameters(), model=model, lr=0.1)`, then `opt.step(closure)` where the
closure zeroes the grads, runs forward and backward and returns the loss; or `loss.backward(); opt.step()`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.kfac_layers import (
    DIAG_KRON,
    CapturedLayer,
    pi_damped_inverses,
    precondition_eigen,
    precondition_inverse,
    symmetric_eigh,
    why_unsupported,
)

_LOSSES_AVERAGED_OVER_ALL_TARGETS = ("cross_entropy", "binary_cross_entropy")
_IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: padded targets are not in the mean


class KFAC(torch.optim.Optimizer):
    """K-FAC preconditioner with an SGD-momentum base step.

    Args:
        params: the parameters to optimise (every one gets the base step; those of supported layers are
            preconditioned first).
        model: the module whose Linear, Conv2d and Embedding layers are preconditioned (protocol keyword).
        lr: learning rate η of the base SGD step.
        momentum, nesterov, weight_decay: of the base SGD step (torch.optim.SGD semantics, coupled decay).
        damping: Tikhonov damping λ.
        factor_decay: ε of the factors' moving averages.
        factor_update_freq, inv_update_freq: steps between factor updates and between eigendecompositions.
        kl_clip: κ of the KL clipping, or None to turn it off.
        pi_damping: split λ between the factors with π (Martens & Grosse 2015 §6.3) instead of the exact
            damping of the Kronecker product; the damped factor inverses are then formed at each inverse
            update and a step costs two matrix products per layer instead of four.
        fisher: "empirical" (the output gradients of the training loss, as kfac-pytorch) or "mc" (those of a
            loss on targets sampled from the model's predictive distribution, as alecwangcq and ASDL, one extra
            forward/backward through closure.model(closure.inputs) on factor-update steps).
        loss: the loss kind on the model's output (protocol keyword); it fixes M, the number of examples
            the batch loss averages over, that turns mean-loss gradients into per-example ones.
        skip_modules: names (or name prefixes) of modules to leave to the base optimizer.
        verbose: print the table of which layer got what at construction.
    """

    def __init__(self, params, model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0, damping=1e-3,
                 factor_decay=0.95, factor_update_freq=1, inv_update_freq=10, kl_clip=1e-3, pi_damping=False,
                 fisher="empirical", loss="cross_entropy", skip_modules=(), verbose=True):
        _validate(lr, momentum, nesterov, weight_decay, damping, factor_decay, factor_update_freq,
                  inv_update_freq, kl_clip, model)
        if fisher not in ("empirical", "mc"):
            raise ValueError(f"Invalid fisher: {fisher!r}. Must be 'empirical' or 'mc'.")
        if fisher == "mc" and loss not in sampled_loss.KINDS:
            raise ValueError(f"Invalid loss for fisher='mc': {loss!r}. Must be one of {', '.join(sampled_loss.KINDS)}.")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, damping=damping,
                        factor_decay=factor_decay, kl_clip=kl_clip, pi_damping=pi_damping)
        super().__init__(params, defaults)
        self.factor_update_freq, self.inv_update_freq, self.loss = factor_update_freq, inv_update_freq, loss
        self.fisher = fisher
        self.layers, table = self._register(model, tuple(skip_modules))
        self._arm_capture(self._step_count_state())
        if verbose:
            print(_format_table(table))

    # ----- registration -------------------------------------------------------------------------------
    def _register(self, model, skip):
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        weight_users = {}
        for module in model.modules():
            if isinstance(getattr(module, "weight", None), torch.Tensor):
                weight_users[id(module.weight)] = weight_users.get(id(module.weight), 0) + 1
        inside_mha = {id(m) for mha in model.modules() if isinstance(mha, nn.MultiheadAttention)
                      for m in mha.modules() if m is not mha}
        layers, table = [], []
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False)]
            if not own:
                continue
            reason = why_unsupported(module)
            if reason is None and id(module) in inside_mha:
                reason = "called functionally by MultiheadAttention"
            if reason is None and any(name == s or name.startswith(s + ".") for s in skip):
                reason = "in skip_modules"
            if reason is None and weight_users.get(id(module.weight), 0) > 1:
                reason = "weight shared with another module"
            if reason is None and not all(id(p) in owned and p.requires_grad for p in own):
                reason = "parameters not all optimised here"
            if reason is None:
                layers.append(CapturedLayer(name, module))
            shapes = " ".join("x".join(map(str, p.shape)) for p in own)
            table.append((name or "(model)", type(module).__name__, shapes,
                          layers[-1].kind if reason is None else "none (base SGD)", reason or ""))
        return layers, table

    # ----- the step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        counter = self._step_count_state()
        t = counter["kfac_step"]
        # Rebuilt every step: load_state_dict() and add_param_group() replace the group dicts.
        self._group_index = {id(p): group for group in self.param_groups for p in group["params"]}
        update_factors = t % self.factor_update_freq == 0
        loss = None
        if closure is not None:
            for layer in self.layers:  # capture exactly this closure's forward/backward
                layer.reset()
                layer.capturing = update_factors and self.fisher == "empirical"
            with torch.enable_grad():
                loss = closure()
        for layer in self.layers:
            layer.capturing = False
        if update_factors and self.fisher == "mc":
            self._capture_sampled_fisher(closure)
        if update_factors:
            self._update_factors(self._loss_examples(closure))
        if t % self.inv_update_freq == 0:
            self._update_inverses()
        self._precondition_grads()
        self._base_step()
        counter["kfac_step"] = t + 1
        self._arm_capture(counter)
        return loss

    def _capture_sampled_fisher(self, closure):
        """Capture factors from a loss on targets sampled from the model (MC Fisher; alecwangcq main.py)."""
        model, inputs = getattr(closure, "model", None), getattr(closure, "inputs", None)
        if model is None or inputs is None:
            raise RuntimeError("KFAC(fisher='mc') needs step(closure) with closure.model and closure.inputs.")
        buffers = [b.clone() for b in model.buffers()]  # the extra forward must not move BatchNorm statistics
        for layer in self.layers:
            layer.reset()
            layer.capturing = True
        with torch.enable_grad():
            sampled = sampled_loss(model(inputs), self.loss, getattr(closure, "targets", None))
            torch.autograd.grad(sampled, [layer.module.weight for layer in self.layers], allow_unused=True)
        for layer in self.layers:
            layer.capturing = False
        for saved, b in zip(buffers, model.buffers()):
            b.copy_(saved)

    def _step_count_state(self):
        # The step count lives in the first parameter's state so that state_dict() carries it.
        state = self.state[self.param_groups[0]["params"][0]]
        state.setdefault("kfac_step", 0)
        return state

    def _arm_capture(self, counter):
        # Without a closure, the hooks record the forward/backward that precedes the next step().
        for layer in self.layers:
            layer.reset()
            layer.capturing = counter["kfac_step"] % self.factor_update_freq == 0 and self.fisher == "empirical"

    def _loss_examples(self, closure):
        """M: the number of examples the batch loss is a mean over (see kfac_layers' docstring)."""
        targets = getattr(closure, "targets", None)
        if torch.is_tensor(targets):
            if self.loss == "cross_entropy" and not targets.is_floating_point():  # padding does not count
                return max(int((targets != _IGNORE_INDEX).sum()), 1)
            return targets.numel() if self.loss in _LOSSES_AVERAGED_OVER_ALL_TARGETS else targets.shape[0]
        firsts = [layer.first_batch for layer in self.layers if layer.first_batch is not None]
        return firsts[0] if firsts else 1  # our choice without a protocol closure: the leading batch dim

    def _update_factors(self, loss_examples):
        for layer in self.layers:
            estimates = layer.factor_estimates(loss_examples)
            layer.reset()
            if estimates is None:
                continue
            a_hat, g_hat = estimates
            state, group = self.state[layer.module.weight], self._group_of(layer.module.weight)
            if "A" not in state:  # identity initialisation (kfac-pytorch, alecwangcq)
                state["A"] = torch.ones_like(a_hat) if layer.kind == DIAG_KRON else _eye_like(a_hat)
                state["G"] = _eye_like(g_hat)
            decay = group["factor_decay"]
            state["A"].mul_(decay).add_(a_hat, alpha=1.0 - decay)  # running average (notes §1.4)
            state["G"].mul_(decay).add_(g_hat, alpha=1.0 - decay)

    def _update_inverses(self):
        for layer in self.layers:
            state = self.state[layer.module.weight]
            if "A" not in state:
                continue
            a, g = state["A"], state["G"]
            d_a, q_a = (a.clamp(min=0.0), None) if layer.kind == DIAG_KRON else symmetric_eigh(a)
            d_g, q_g = symmetric_eigh(g)
            group = self._group_of(layer.module.weight)
            if group["pi_damping"]:
                # π = sqrt((tr A / dim A) / (tr G / dim G)) (Martens & Grosse 2015 §6.3). Our choice: λ and π
                # are fixed here, at the inverse update, so a changed damping acts from the next one.
                mean_a = a.mean() if layer.kind == DIAG_KRON else a.diagonal().mean()
                mean_g = g.diagonal().mean()
                pi = float((mean_a / mean_g).sqrt()) if mean_g > 0 and mean_a > 0 else 1.0
                state["G_inv"], state["A_inv"] = pi_damped_inverses(q_g, d_g, q_a, d_a, group["damping"], pi,
                                                                    layer.kind)
            else:
                state["dA"], state["dG"], state["QG"] = d_a, d_g, q_g
                if q_a is not None:
                    state["QA"] = q_a

    def _precondition_grads(self):
        pairs = []
        for layer in self.layers:
            state = self.state[layer.module.weight]
            if any(p.grad is None for p in layer.params):
                continue  # no gradient: nothing to precondition
            group, v = self._group_of(layer.module.weight), layer.grad_matrix()
            if "G_inv" in state:
                v_new = precondition_inverse(v, state["G_inv"], state["A_inv"], layer.kind)
            elif "QG" in state:
                denominator = layer.eigen_denominator(state["dG"], state["dA"], group["damping"])
                v_new = precondition_eigen(v, state["QG"], state.get("QA"), denominator, layer.kind)
            else:
                continue  # no factors captured yet: the base step acts alone
            pairs.append((layer, v, v_new, group))
        nu = self._kl_clip_factor(pairs)
        for layer, _, v_new, _ in pairs:
            layer.set_grad_matrix(v_new if nu is None else v_new * nu)

    @staticmethod
    def _kl_clip_factor(pairs):
        # ν = min(1, sqrt(κ / |Σ_ℓ η² ⟨V'_ℓ, V_ℓ⟩|)) (kfac-pytorch base_preconditioner, Ba et al. 2017).
        clipped = [(v, v_new, g) for _, v, v_new, g in pairs if g["kl_clip"] is not None]
        if not clipped:
            return None
        vg_sum = sum((v_new * v).sum() * g["lr"] ** 2 for v, v_new, g in clipped).abs()
        kappa = clipped[0][2]["kl_clip"]
        # ν = 1 when Σ⟨V', V⟩ = 0; torch.where avoids a host-device sync.
        return torch.where(vg_sum > 0, (kappa / vg_sum).sqrt().clamp(max=1.0), torch.ones_like(vg_sum))

    def _base_step(self):
        # SGD with momentum as torch.optim.SGD (dampening 0): d = ∇ + wd·θ; b ← μb + d; θ ← θ − η(b or d + μb),
        # as foreach calls over each group's parameters that have a gradient.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                states = [self.state[p] for p in params]
                running = [(s["momentum_buffer"], d) for s, d in zip(states, grads) if "momentum_buffer" in s]
                if running:
                    buffers = [b for b, _ in running]
                    torch._foreach_mul_(buffers, group["momentum"])
                    torch._foreach_add_(buffers, [d for _, d in running])
                for s, d in zip(states, grads):
                    if "momentum_buffer" not in s:
                        s["momentum_buffer"] = d.clone()
                buffers = [s["momentum_buffer"] for s in states]
                grads = torch._foreach_add(grads, buffers, alpha=group["momentum"]) if group["nesterov"] else buffers
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    def _group_of(self, param):
        return self._group_index[id(param)]

    def remove_hooks(self):
        """Detach K-FAC's forward hooks from the model (the optimizer then only takes base steps)."""
        for layer in self.layers:
            layer.remove()
        self.layers = []


def sampled_loss(output, kind, targets=None):
    """The protocol's loss kinds on targets drawn from the model's own predictive distribution.

    Cross-entropy positions whose real target is padding (-100) stay out of the sampled loss, as they stay out of
    the training loss: Ĝ then sums over the same positions, and with the same 1/M, as the empirical Fisher's. Â
    still averages the layer inputs over every row, padded ones included (kfac-pytorch does the same)."""
    with torch.no_grad():
        if kind == "cross_entropy":
            probs = torch.softmax(output.reshape(-1, output.shape[-1]).float(), dim=-1)
            target = torch.multinomial(probs, 1).reshape(-1)
            if torch.is_tensor(targets) and not targets.is_floating_point():
                target = target.masked_fill(targets.reshape(-1) == _IGNORE_INDEX, _IGNORE_INDEX)
        elif kind == "mse":
            target = output + torch.randn_like(output)  # y ~ N(f(x), I) for ½‖f(x) − y‖²
        else:
            target = torch.bernoulli(torch.sigmoid(output))
    if kind == "cross_entropy":  # a mean over the unpadded positions (0 when all are padding, not nan)
        counted = max(int((target != _IGNORE_INDEX).sum()), 1)
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target, reduction="sum") / counted
    if kind == "mse":
        return 0.5 * (output - target).pow(2).reshape(output.shape[0], -1).sum(1).mean()
    return F.binary_cross_entropy_with_logits(output, target)


sampled_loss.KINDS = ("cross_entropy", "mse", "binary_cross_entropy")


def _eye_like(matrix):
    return torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)


def _format_table(rows):
    header = ("module", "type", "params", "K-FAC", "why not")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    lines = ["K-FAC layer registration:"]
    for row in [header] + rows:
        lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _validate(lr, momentum, nesterov, weight_decay, damping, factor_decay, factor_update_freq, inv_update_freq,
              kl_clip, model):
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}. Must be >= 0.0.")
    if not momentum >= 0.0:
        raise ValueError(f"Invalid momentum: {momentum}. Must be >= 0.0.")
    if nesterov and momentum <= 0.0:
        raise ValueError("Invalid nesterov: True. Nesterov momentum requires momentum > 0.0.")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay}. Must be >= 0.0.")
    if not damping > 0.0:
        raise ValueError(f"Invalid damping: {damping}. Must be > 0.0.")
    if not 0.0 <= factor_decay < 1.0:
        raise ValueError(f"Invalid factor_decay: {factor_decay}. Must be in [0.0, 1.0).")
    for key, value in (("factor_update_freq", factor_update_freq), ("inv_update_freq", inv_update_freq)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Invalid {key}: {value}. Must be an integer >= 1.")
    if kl_clip is not None and not kl_clip > 0.0:
        raise ValueError(f"Invalid kl_clip: {kl_clip}. Must be > 0.0 or None.")
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__}. Must be a torch.nn.Module.")
