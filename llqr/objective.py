"""The relaxed LQR objective J(u) = gᵀu + ½uᵀ(M + λI)u on one batch, matrix-free (llqr_spec.md §4.1–§4.2).

J(U) = m(U·d) is the global quadratic model at the structured step [R] ✓[V0]; its gradient in the controls is

    ∂J/∂u = g + (M + λI)u                                              (spec §4.2 identity [C][R])

and J = ½(gᵀu + uᵀ∂J/∂u), so each inner step needs only one product with M.

* ``gauss_newton`` / ``ngd``: M = Jᵀ H_out J with J = ∂output/∂θ. One ``torch.func.jvp`` (J u) and one call
  of a ``torch.func.vjp`` function cached per refit (Jᵀ·) per product — the whole-network shortcut of
  spec §4.2 [E], identical to the authors' stage-wise JVP rollout + VJP sweep by the Theorem of §3. With a
  ``linearization_cache`` (llqr/tangent.py, what LLQR passes), J u runs only the tangent half of a JVP traced
  once per batch shape, as the authors' ``jax.linearize`` [C]: the same numbers, about half the time.
  - ``gauss_newton``: H_out = the Hessian of the batch-**mean** loss in the output (GGN of the mean loss).
  - ``ngd``: the authors' natural-gradient metric, the batch-**sum** Fisher Σ_n J_nᵀ(diag p_n − p_n p_nᵀ)J_n
    beside the batch-mean gradient g [C] (`ngd_divergence_f`, costate −p per sample, no 1/B; spec §2
    "Scale caveat"). For sequence outputs the sum runs over every position (our reading [R]).
* ``newton``: M = ∇²L of the mean loss by **double backward** (grad of grad on a graph built once per refit).
  Forward-over-reverse is avoided on purpose: with torch 2.14.1 it returns a wrong Hessian through
  training-mode BatchNorm with affine parameters (issue 5 §4); tests check this path against finite
  differences.

The forward passes run ``torch.func.functional_call`` with the model's buffers cloned on every call, so
BatchNorm in training mode uses batch statistics and its running statistics stay untouched ([E], spec §5);
the RNG state is reset before every forward so dropout masks stay fixed within a refit ([E], spec §5);
``scaled_dot_product_attention`` runs its math kernel there (the fused kernels lack forward-mode AD) [E].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten, tree_unflatten

DIVERGENCES = ("ngd", "gauss_newton", "newton")
LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")
IGNORE_INDEX = -100  # padded targets (harness.protocol.IGNORE_INDEX, F.cross_entropy's default)


def mean_loss(kind: str, output: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loop's losses (CONVENTIONS): each a mean over the batch (over all positions for CE).

    ``label_smoothing`` ε: cross-entropy against (1 − ε)·one-hot + ε/K, torch's definition and the authors'
    (``_cross_entropy_log_prob_gradient`` [C]); it changes g, not the softmax curvature of the Fisher / GGN.
    Padded target positions (-100, IWSLT) are left out of g and of its mean, and `output_hessian_product` leaves
    them out of the curvature, so the LQR terminal is the quadratic model of the loss the training loop minimises.
    Read, not run: the authors' analytic CE terminal (build_lqr.py `_cross_entropy_log_prob_gradient` [C]) has no
    ignore_index, so their g and curvature also count pad-class targets at padded positions, averaged over all
    positions of a refit batch padded to the longest training pair."""
    if kind == "cross_entropy":
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1),
                               label_smoothing=label_smoothing)
    if kind == "mse":
        return 0.5 * (output - targets).pow(2).reshape(output.shape[0], -1).sum(1).mean()
    if kind == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(output, targets.to(output.dtype))
    raise ValueError(f"Invalid loss: {kind}. Must be one of {LOSSES}.")


def output_hessian_product(kind: str, output: torch.Tensor, v: torch.Tensor, batch_sum: bool,
                           targets: torch.Tensor = None) -> torch.Tensor:
    """H_out·v: the Hessian of the mean loss in the output, times the number of terms when ``batch_sum``.

    For cross-entropy, positions whose target is padding (-100) are not terms of the loss: their rows of H_out·v
    are 0 and they are not counted in the mean (the Gauss-Newton matrix of `mean_loss`)."""
    if kind == "cross_entropy":
        z = output.reshape(-1, output.shape[-1])
        p, w = torch.softmax(z, dim=-1), v.reshape(z.shape)
        hv = p * w - p * (p * w).sum(-1, keepdim=True)  # (diag p − p pᵀ) v per position
        n = z.shape[0]
        if torch.is_tensor(targets) and not targets.is_floating_point():
            counted = targets.reshape(-1, 1) != IGNORE_INDEX
            hv, n = hv * counted, max(int(counted.sum()), 1)
    elif kind == "mse":
        hv, n = v, output.shape[0]
    elif kind == "binary_cross_entropy":
        s = torch.sigmoid(output)
        hv, n = s * (1 - s) * v, output.numel()
    else:
        raise ValueError(f"Invalid loss: {kind}. Must be one of {LOSSES}.")
    hv = hv.reshape(output.shape)
    return hv if batch_sum else hv / n


class _RNGPin:
    """Saves the RNG state once and restores it before each forward (fixed dropout masks) [E]."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.random.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def reset(self):
        torch.random.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


class LQRObjective:
    """J(u) = gᵀu + ½uᵀ(M + λI)u for the parameters ``params`` of ``model`` on (inputs, targets).

    ``params`` must be parameters of ``model`` (other parameters are held fixed). ``g`` is the gradient of the
    mean loss (label-smoothed cross-entropy when ``label_smoothing`` > 0); ``grad_u(u)`` returns g + (M + λI)u;
    ``value(u)`` returns J(u). ``linearization_cache``: a ``llqr.tangent.LinearizationCache`` shared across refits
    (Gauss-Newton / NGD only), or None (eager JVPs).
    """

    def __init__(self, model, params, loss, inputs, targets, divergence="ngd", damping=0.0,
                 linearization_cache=None, label_smoothing=0.0):
        if divergence not in DIVERGENCES:
            raise ValueError(f"Invalid divergence: {divergence}. Must be one of {DIVERGENCES}.")
        self.model, self.loss, self.divergence, self.damping = model, loss, divergence, float(damping)
        self.label_smoothing = float(label_smoothing)
        self.inputs, self.targets = inputs, targets
        self.params = list(params)
        self._names, fixed = _parameter_names(model, self.params)
        buffers = dict(model.named_buffers())
        self._fixed_names, self._buffer_names = list(fixed), list(buffers)
        input_leaves, self._input_spec = tree_flatten(inputs)  # a tensor, or a tuple of them (seq2seq models)
        # what the forward reads besides θ
        self._rest = list(fixed.values()) + list(buffers.values()) + input_leaves
        self._cache = linearization_cache
        self._rng = _RNGPin(self.params[0].device)
        self._theta = tuple(p.detach() for p in self.params)
        if divergence == "newton":
            self._setup_newton()
        else:
            self._setup_gauss_newton()

    # -- forward ---------------------------------------------------------------------------------------------
    def _forward(self, theta):
        self._rng.reset()  # same dropout masks in every forward of this refit [E]
        return self._forward_with(theta, self._rest)

    def _forward_with(self, theta, rest):
        """The model at parameters θ, reading the fixed parameters, buffers and inputs from ``rest``."""
        n_fixed, n_buffers = len(self._fixed_names), len(self._buffer_names)
        tensors = dict(zip(self._fixed_names, rest[:n_fixed]))
        # BN running stats hit the clones [E]
        tensors.update((n, b.clone()) for n, b in zip(self._buffer_names, rest[n_fixed:n_fixed + n_buffers]))
        tensors.update(zip(self._names, theta))
        # The fused attention kernels have no forward-mode AD: refit forwards use the math SDPA kernel [E].
        inputs = tree_unflatten(list(rest[n_fixed + n_buffers:]), self._input_spec)
        with sdpa_kernel([SDPBackend.MATH]):
            return functional_call(self.model, tensors, (inputs,))

    # -- Gauss-Newton / NGD: one JVP + one cached VJP per product ([E] spec §4.2 shortcut) -----------------
    def _setup_gauss_newton(self):
        output, self._vjp_fn = vjp(self._forward, self._theta)
        self.output = output.detach()
        with torch.enable_grad():
            out = self.output.clone().requires_grad_(True)
            loss = mean_loss(self.loss, out, self.targets, self.label_smoothing)
            (dl_dout,) = torch.autograd.grad(loss, out)
        self.loss_value = loss.detach()
        self.g = list(self._vjp_fn(dl_dout)[0])
        self._jvp_fn = None  # u ↦ J·u from the cached linearisation, when it reproduces the eager JVP [E]
        if self._cache is not None and all(torch.is_tensor(t) for t in self._rest):
            names = self._names + self._fixed_names + self._buffer_names
            self._jvp_fn = self._cache.linearize(self._forward_with, list(self._theta) + self._rest,
                                                 len(self._theta), self.model, names, self.output, self._rng.reset)

    def _gauss_newton_product(self, u):
        if self._jvp_fn is not None:
            ju = self._jvp_fn(tuple(u))
        else:
            _, ju = jvp(self._forward, (self._theta,), (tuple(u),))
        h_ju = output_hessian_product(self.loss, self.output, ju, batch_sum=self.divergence == "ngd",
                                      targets=self.targets)
        return list(self._vjp_fn(h_ju)[0])

    # -- Newton: Hessian-vector products by double backward (issue 5 §4) -----------------------------------
    def _setup_newton(self):
        self._theta_req = [t.clone().requires_grad_(True) for t in self._theta]
        with torch.enable_grad():
            loss = mean_loss(self.loss, self._forward(self._theta_req), self.targets, self.label_smoothing)
            grads = torch.autograd.grad(loss, self._theta_req, create_graph=True, allow_unused=True)
        self._grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(self._theta, grads)]
        self.loss_value = loss.detach()
        self.g = [gr.detach() for gr in self._grads]

    def _newton_product(self, u):
        hu = torch.autograd.grad(self._grads, self._theta_req, grad_outputs=list(u), retain_graph=True,
                                 allow_unused=True)
        return [torch.zeros_like(t) if h is None else h for t, h in zip(self._theta, hu)]

    # -- public ------------------------------------------------------------------------------------------------
    def metric_product(self, u):
        """M·u (without damping)."""
        u = [x.detach() for x in u]
        if self.divergence == "newton":
            with torch.enable_grad():
                return [h.detach() for h in self._newton_product(u)]
        return [m.detach() for m in self._gauss_newton_product(u)]

    def grad_u(self, u):
        """∂J/∂u = g + (M + λI)u  (spec §4.2; damping adds λu to the control block [C])."""
        mu = self.metric_product(u)
        return [g + m + self.damping * x for g, m, x in zip(self.g, mu, u)]

    def value(self, u, grad_u=None):
        """J(u) = gᵀu + ½uᵀ(M + λI)u = ½(gᵀu + uᵀ∂J/∂u)."""
        grad_u = self.grad_u(u) if grad_u is None else grad_u
        return 0.5 * sum((g * x).sum() + (c * x).sum() for g, c, x in zip(self.g, grad_u, u))


def _parameter_names(model, params):
    """Names of ``params`` in ``model`` (first name of a tied parameter) and the other parameters, detached."""
    wanted = {id(p) for p in params}
    name_of, fixed = {}, {}
    for name, p in model.named_parameters():
        if id(p) in wanted:
            name_of[id(p)] = name
        else:
            fixed[name] = p.detach()
    missing = [i for i, p in enumerate(params) if id(p) not in name_of]
    if missing:
        raise ValueError(f"Parameters at positions {missing} are not parameters of the model given to LLQR.")
    return [name_of[id(p)] for p in params], fixed
