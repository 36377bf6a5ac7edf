"""Shampoo (Gupta, Koren & Singer 2018) with the semantics of DistributedShampoo's defaults (Shi et al. 2023,
facebookresearch/optimizers), as baselines_notes.md §2.3 gives them.

Per parameter and step t, for every block B of the merged, blocked gradient G:
    L_i ← β₂ L_i + (1−β₂) G_(i) G_(i)ᵀ   (β₂ = 1: the AdaGrad sum L_i ← L_i + G_(i) G_(i)ᵀ)
    M ← β₁ M + (1−β₁) G,  M̂ = M / (1 − β₁ᵗ)
    P_sh = M̂ ×₁ L̂_1^{-1/2k} … ×_k L̂_k^{-1/2k}   (matrix: L^{-1/4} M̂ R^{-1/4}; roots refreshed every
                                                  precondition_frequency steps, by eigh with an absolute ε)
    D = P_gr (t < start_preconditioning_step), else (‖P_gr‖/‖P_sh‖) P_sh (grafting, per block)
    θ ← θ − η (D + wd·θ)   (decoupled weight decay), optionally through heavy-ball momentum on D + wd·θ.

Usage: `Shampoo(model.parameters(), lr=1e-3, betas=(0.9, 0.999), grafting="adam", precondition_frequency=100)`.
"""

import functools

import torch

from baselines.shampoo_blocks import apply_roots, block_slices, inverse_root, merge_small_dims, mode_gram

GRAFTINGS = (None, "adam", "adagrad", "sgd")


class Shampoo(torch.optim.Optimizer):
    """Args (defaults are DistributedShampoo's constructor defaults):
        lr: step size η.
        betas: (β₁ of the filtered gradient, β₂ of the factors; β₂ = 1 sums them as AdaGrad does).
        epsilon: ε added to the factors' eigenvalues before the root inverse.
        momentum, nesterov: heavy-ball momentum on the search direction (DistributedShampoo's momentum).
        weight_decay: decoupled weight decay.
        max_preconditioner_dim: largest factor side; larger dims are split into blocks.
        precondition_frequency: steps between root-inverse refreshes.
        start_preconditioning_step: first step with the Shampoo direction; -1 means precondition_frequency.
        use_bias_correction: divide M by 1−β₁ᵗ and the factors (β₂ < 1) by 1−β₂ᵗ.
        grafting: None, "adam", "adagrad" or "sgd": whose per-block step norm the direction takes.
        grafting_beta2, grafting_epsilon: of the Adam/AdaGrad grafting (AdaGrad ignores grafting_beta2).
        use_merge_dims: merge small dims (merge_small_dims) before blocking.
    """

    def __init__(self, params, lr=1e-2, betas=(0.9, 1.0), epsilon=1e-12, momentum=0.0, nesterov=False,
                 weight_decay=0.0, max_preconditioner_dim=1024, precondition_frequency=1,
                 start_preconditioning_step=-1, use_bias_correction=True, grafting=None, grafting_beta2=0.999,
                 grafting_epsilon=1e-8, use_merge_dims=True):
        betas = tuple(betas)
        _validate(lr, betas, epsilon, momentum, nesterov, weight_decay, max_preconditioner_dim,
                  precondition_frequency, start_preconditioning_step, grafting, grafting_beta2, grafting_epsilon)
        if start_preconditioning_step == -1:  # DistributedShampoo: -1 means "= precondition_frequency"
            start_preconditioning_step = precondition_frequency
        defaults = dict(lr=lr, betas=betas, epsilon=epsilon, momentum=momentum, nesterov=nesterov,
                        weight_decay=weight_decay, max_preconditioner_dim=max_preconditioner_dim,
                        precondition_frequency=precondition_frequency,
                        start_preconditioning_step=start_preconditioning_step,
                        use_bias_correction=use_bias_correction, grafting=grafting, grafting_beta2=grafting_beta2,
                        grafting_epsilon=grafting_epsilon, use_merge_dims=use_merge_dims)
        super().__init__(params, defaults)

    @staticmethod
    def layout(shape, group):
        """(merged shape, block slices) of a parameter of `shape` in `group`."""
        return _layout(tuple(shape), group["max_preconditioner_dim"], group["use_merge_dims"])

    def _init_state(self, p, group):
        merged, slices = self.layout(p.shape, group)
        state = self.state[p]
        state["step"] = 0
        # One factor per mode of every block, and its root inverse (identity until the first refresh).
        state["factors"] = [[torch.zeros(n, n, dtype=p.dtype, device=p.device) for n in _block_shape(sl)]
                            for sl in slices]
        state["roots"] = [[torch.eye(n, dtype=p.dtype, device=p.device) for n in _block_shape(sl)]
                          for sl in slices]
        if group["betas"][0] > 0:
            state["filtered_grad"] = torch.zeros_like(p)
        if group["grafting"] in ("adam", "adagrad"):
            state["graft_sq"] = torch.zeros_like(p)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Shampoo does not support sparse gradients.")
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                state["step"] += 1
                self._update_param(p, state, group)
        return loss

    def _update_param(self, p, state, group):
        t, grad = state["step"], p.grad
        beta1, beta2 = group["betas"]
        merged, slices = self.layout(p.shape, group)
        self._update_factors(grad.reshape(merged), slices, state, beta2)
        self._update_graft_statistics(grad, state, group)
        freq, start = group["precondition_frequency"], group["start_preconditioning_step"]
        if (t % freq == 0 and t > start) or t == start:  # DistributedShampoo's amortized-computation rule
            self._refresh_roots(state, group, t)
        m_hat = self._filtered_grad(grad, state, beta1, group["use_bias_correction"], t)
        graft = self._graft_direction(m_hat, state, group, t)
        if graft is not None and t < start:
            direction = graft  # before preconditioning starts, the grafting method's step alone
        else:
            direction = self._shampoo_direction(m_hat.reshape(merged), graft, slices, state, merged).reshape(p.shape)
        if group["weight_decay"]:
            direction = direction.add(p, alpha=group["weight_decay"])  # decoupled: P ← P + wd·θ
        if group["momentum"]:
            buf = state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
            direction = direction.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        p.add_(direction, alpha=-group["lr"])

    @staticmethod
    def _update_factors(merged_grad, slices, state, beta2):
        for sl, factors in zip(slices, state["factors"]):
            block = merged_grad[sl]
            for dim, factor in enumerate(factors):
                if beta2 == 1.0:
                    factor.add_(mode_gram(block, dim))  # AdaGrad sum L ← L + G Gᵀ
                else:
                    factor.mul_(beta2).add_(mode_gram(block, dim), alpha=1.0 - beta2)  # EMA

    @staticmethod
    def _update_graft_statistics(grad, state, group):
        if group["grafting"] == "adam":
            state["graft_sq"].mul_(group["grafting_beta2"]).addcmul_(grad, grad, value=1.0 - group["grafting_beta2"])
        elif group["grafting"] == "adagrad":
            state["graft_sq"].addcmul_(grad, grad)

    @staticmethod
    def _refresh_roots(state, group, t):
        beta2 = group["betas"][1]
        # Bias-corrected factors L̂ = L / (1 − β₂ᵗ) when β₂ < 1 (notes §2.3).
        correction = 1.0 - beta2**t if (beta2 < 1.0 and group["use_bias_correction"]) else 1.0
        for factors, roots in zip(state["factors"], state["roots"]):
            order = len(factors)
            for i, factor in enumerate(factors):
                # L^{-1/(2k)} for an order-k block: -1/4 per side of a matrix, -1/2 for a vector.
                roots[i] = inverse_root(factor / correction, 2 * order, group["epsilon"])

    @staticmethod
    def _filtered_grad(grad, state, beta1, bias_correction, t):
        if beta1 == 0:
            return grad
        state["filtered_grad"].lerp_(grad, 1.0 - beta1)  # M ← β₁M + (1−β₁)G
        return state["filtered_grad"] / (1.0 - beta1**t) if bias_correction else state["filtered_grad"]

    @staticmethod
    def _graft_direction(m_hat, state, group, t):
        kind = group["grafting"]
        if kind is None:
            return None
        if kind == "sgd":
            return m_hat
        v = state["graft_sq"]
        if kind == "adam" and group["use_bias_correction"]:
            v = v / (1.0 - group["grafting_beta2"] ** t)
        return m_hat / (v.sqrt() + group["grafting_epsilon"])  # P_gr = M̂ / (sqrt(V̂) + εᵍ)

    @staticmethod
    def _shampoo_direction(merged_m, graft, slices, state, merged):
        out = torch.empty_like(merged_m)
        merged_graft = None if graft is None else graft.reshape(merged)
        for sl, roots in zip(slices, state["roots"]):
            p_sh = apply_roots(merged_m[sl], roots)
            if merged_graft is not None:  # grafting per block: ‖P_gr‖/‖P_sh‖ · P_sh (0 when P_sh = 0)
                norm = p_sh.norm()
                scale = torch.where(norm > 0, merged_graft[sl].norm() / norm, torch.zeros_like(norm))
                p_sh = p_sh * scale  # no host-device sync
            out[sl] = p_sh
        return out


@functools.lru_cache(maxsize=None)
def _layout(shape, max_dim, merge):
    merged = merge_small_dims(shape, max_dim) if merge else tuple(d for d in shape if d != 1)
    return merged, block_slices(merged, max_dim)


def _block_shape(slices):
    return [s.stop - s.start for s in slices]


def _validate(lr, betas, epsilon, momentum, nesterov, weight_decay, max_dim, frequency, start, grafting,
              grafting_beta2, grafting_epsilon):
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}. Must be >= 0.0.")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas}. Must be a pair (beta1, beta2).")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}. Must be in [0.0, 1.0).")
    if not 0.0 < betas[1] <= 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}. Must be in (0.0, 1.0].")
    if not epsilon > 0.0:
        raise ValueError(f"Invalid epsilon value: {epsilon}. Must be > 0.0.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum: {momentum}. Must be in [0.0, 1.0).")
    if nesterov and momentum == 0.0:
        raise ValueError("Invalid nesterov: True. Nesterov momentum requires momentum > 0.0.")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay}. Must be >= 0.0.")
    for key, value in (("max_preconditioner_dim", max_dim), ("precondition_frequency", frequency)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Invalid {key}: {value}. Must be an integer >= 1.")
    if not isinstance(start, int) or isinstance(start, bool) or not (start == -1 or start >= 1):
        raise ValueError(f"Invalid start_preconditioning_step: {start}. Must be -1 or an integer >= 1.")
    if grafting not in GRAFTINGS:
        raise ValueError(f"Invalid grafting: {grafting!r}. Must be one of None, 'adam', 'adagrad', 'sgd'.")
    if not 0.0 < grafting_beta2 <= 1.0:
        raise ValueError(f"Invalid grafting_beta2: {grafting_beta2}. Must be in (0.0, 1.0].")
    if not grafting_epsilon > 0.0:
        raise ValueError(f"Invalid grafting_epsilon: {grafting_epsilon}. Must be > 0.0.")
