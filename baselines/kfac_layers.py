"""The layers K-FAC preconditions: which modules qualify, how their factors are captured, how a gradient is
preconditioned given the factors' eigendecompositions.

Conventions (baselines_notes.md §1.4). A layer computes s = W̄ ā with W̄ = [W | b] and ā = [a; 1] when it has
a bias. Every row of its input (a batch element, a spatial location of a conv, a time step of a recurrent cell,
a token of a sequence) is one "expand" row (Eschenhagen et al. 2023, "K-FAC-expand"):

    Â = (1/R) Σ_rows ā āᵀ                 (R = number of input rows)
    Ĝ = (1/M) Σ_rows (M g)(M g)ᵀ           (g = ∂loss/∂s of the batch-mean loss, M = examples the loss averages)

For a Linear on (N, d) inputs this is the per-example Fisher (alecwangcq `batch_averaged`); for a Conv2d it is
the KFC scaling of Grosse & Martens 2016 (A averaged over N·T locations, G summed over locations, averaged
over N); for a Linear cell applied T times per forward it sums the per-step factors (Martens, Ba & Johnson 2018,
option 1, "independent time steps").
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

KRON = "kron"
DIAG_KRON = "diag-kron"  # Embedding: the input factor of one-hot rows is diagonal


def why_unsupported(module):
    """None when K-FAC can precondition `module` by itself, else the reason it cannot."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped/depthwise conv"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if _conv_padding(module) is None:
            return "padding='same' with an even kernel"
        return None
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.sparse:
            return "Embedding with max_norm or sparse grads"
        return None
    if isinstance(module, nn.Linear):
        return None
    return "module type"


def kind_of(module):
    return DIAG_KRON if isinstance(module, nn.Embedding) else KRON


def _conv_padding(module):
    if not isinstance(module.padding, str):
        return module.padding
    if module.padding == "valid":
        return (0, 0)
    pads = [d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
    if any(p % 2 for p in pads):
        return None
    return tuple(p // 2 for p in pads)


def input_second_moment(module, x):
    """(Σ ā āᵀ, number of rows) over the layer's input rows, ā = [a; 1] when the layer has a bias.

    The bias block is assembled from column sums, [[Σaaᵀ, Σa], [Σaᵀ, R]], instead of concatenating a column of
    ones; a conv's patches are laid out (d_in, rows) for one cheap copy (an implementation choice for speed).
    """
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, module.dilation, _conv_padding(module), module.stride)
        cols = patches.permute(1, 0, 2).reshape(patches.shape[1], -1)
    else:
        cols = x.reshape(-1, x.shape[-1]).T
    gram, n_rows = cols @ cols.T, cols.shape[1]
    if module.bias is None:
        return gram, n_rows
    sums = cols.sum(dim=1, keepdim=True)
    corner = torch.full((1, 1), float(n_rows), dtype=gram.dtype, device=gram.device)
    return torch.cat([torch.cat([gram, sums], 1), torch.cat([sums.T, corner], 1)], 0), n_rows


def output_grad_rows(module, grad):
    """∂loss/∂s as (rows, d_out): channels last for a conv."""
    if isinstance(module, nn.Conv2d):
        grad = grad.movedim(1, -1)
    return grad.reshape(-1, grad.shape[-1])


class CapturedLayer:
    """One preconditioned module: forward hooks accumulate Σ āāᵀ and Σ ggᵀ while `capturing` is on.

    A module called several times in one forward pass (a recurrent cell) adds every call's rows.
    """

    def __init__(self, name, module):
        self.name, self.module, self.kind = name, module, kind_of(module)
        self.capturing = False
        self.reset()
        self._handle = module.register_forward_hook(self._forward_hook)

    def reset(self):
        self.a_sum, self.a_rows, self.g_sum, self.first_batch = None, 0, None, None

    def remove(self):
        self._handle.remove()

    @property
    def params(self):
        bias = getattr(self.module, "bias", None)
        return [self.module.weight] + ([bias] if bias is not None else [])

    def _forward_hook(self, module, inputs, output):
        if not (self.capturing and module.training and torch.is_grad_enabled() and output.requires_grad):
            return
        x = inputs[0]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # statistics in full precision
            if self.first_batch is None:
                self.first_batch = x.shape[0]
            if self.kind == DIAG_KRON:
                # One-hot rows: Σ āāᵀ is diagonal with the counts of each index.
                stat = torch.bincount(x.reshape(-1), minlength=module.num_embeddings).to(module.weight.dtype)
                rows = x.numel()
            else:
                # Factors in the weight's dtype (under AMP the activations may be half precision).
                stat, rows = input_second_moment(module, x.detach().to(module.weight.dtype))
            self.a_sum = stat if self.a_sum is None else self.a_sum + stat
            self.a_rows += rows
        output.register_hook(self._grad_hook)

    def _grad_hook(self, grad):
        with torch.no_grad():
            g = output_grad_rows(self.module, grad.detach()).to(self.module.weight.dtype)
            stat = g.T @ g
            self.g_sum = stat if self.g_sum is None else self.g_sum + stat

    def factor_estimates(self, loss_examples):
        """(Â, Ĝ) from the rows captured since the last reset, or None if nothing was captured."""
        if self.a_sum is None or self.g_sum is None:
            return None
        return self.a_sum / self.a_rows, self.g_sum * loss_examples

    def grad_matrix(self):
        """The gradient as V = [∇W | ∇b] (d_out × d_in [+1]); for an Embedding, ∇W itself (vocab × d)."""
        w = self.module.weight
        if self.kind == DIAG_KRON:
            return w.grad
        v = w.grad.reshape(w.shape[0], -1)
        bias = getattr(self.module, "bias", None)
        if bias is not None:
            v = torch.cat([v, bias.grad.reshape(-1, 1)], dim=1)
        return v

    def set_grad_matrix(self, v):
        w = self.module.weight
        if self.kind == DIAG_KRON:
            w.grad.copy_(v)
            return
        bias = getattr(self.module, "bias", None)
        n_w = v.shape[1] - (1 if bias is not None else 0)
        w.grad.copy_(v[:, :n_w].reshape(w.shape))
        if bias is not None:
            bias.grad.copy_(v[:, n_w])


def precondition_eigen(v, q_g, d_g, q_a, d_a, damping, kind):
    """(A ⊗ G + λI)⁻¹ vec(V) = Q_G [(Q_Gᵀ V Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ: exact Tikhonov damping of the Kronecker
    product through the eigenbases (kfac-pytorch's EIGEN method; alecwangcq).

    For an Embedding (kind DIAG_KRON) V is vocab × d, A is diagonal (q_a unused) and V is preconditioned as
    the transpose of a Linear's gradient.
    """
    if kind == DIAG_KRON:
        return ((v @ q_g) / (torch.outer(d_a, d_g) + damping)) @ q_g.T
    return q_g @ ((q_g.T @ v @ q_a) / (torch.outer(d_g, d_a) + damping)) @ q_a.T


def pi_damped_inverses(q_g, d_g, q_a, d_a, damping, pi, kind):
    """(G + (√λ/π) I)⁻¹ and (A + π√λ I)⁻¹ (Martens & Grosse 2015 §6.3), formed once per inverse update so that
    each step costs two products (kfac-pytorch's INVERSE method). For an Embedding the second is a vector."""
    root = damping**0.5
    g_inv = (q_g / (d_g + root / pi)) @ q_g.T
    if kind == DIAG_KRON:
        return g_inv, 1.0 / (d_a + pi * root)
    return g_inv, (q_a / (d_a + pi * root)) @ q_a.T


def precondition_inverse(v, g_inv, a_inv, kind):
    """G_d⁻¹ V A_d⁻¹ with the π-damped inverses (an Embedding's V is vocab × d: diag(a_inv) V G_d⁻¹)."""
    if kind == DIAG_KRON:
        return (v * a_inv[:, None]) @ g_inv
    return g_inv @ v @ a_inv


def symmetric_eigh(matrix):
    """Eigendecomposition with eigenvalues clamped at 0 (kfac-pytorch), retried in float64 on failure."""
    try:
        d, q = torch.linalg.eigh(matrix)
    except RuntimeError:  # ill-conditioned in float32 (baselines_notes.md §1.4 "Retry in float64")
        d, q = torch.linalg.eigh(matrix.double())
        d, q = d.to(matrix.dtype), q.to(matrix.dtype)
    return d.clamp_(min=0.0), q
