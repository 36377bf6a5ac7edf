"""The layers K-FAC preconditions: which modules qualify, how their factors are captured, how a gradient is
preconditioned given the factors' eigendecompositions.

Conventions (baselines_notes.md §1.4). A layer computes s = W̄ ā with W̄ = [W | b] and ā = [a; 1] when it has
a bias. Every row of its input (a batch element, a spatial location of a conv, a time step of a recurrent cell,
a token of a sequence, padded tokens included: kfac-pytorch's choice) is one "expand" row (Eschenhagen et al.
2023, "K-FAC-expand"). A padded position that no unpadded one attends to (key-padding or causal masks) has
g = 0, so it adds to R but not to Ĝ:

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

from baselines.eigh import eigh_retrying_in_float64

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


def input_columns(module, x):
    """The layer's input rows as the columns of a (d_in, rows) matrix, in the weight's column order: a conv's patches
    (channel, kernel row, kernel column) × (example, output row, output column), a Linear's inputs as they are.

    A conv's patches are read through a strided view of the (padded) input and copied once into this layout; for
    a Linear the result is a view (an implementation choice for speed: no unfold, no permuted copy)."""
    if not isinstance(module, nn.Conv2d):
        return x.reshape(-1, x.shape[-1]).T
    pad_h, pad_w = _conv_padding(module)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    n, c, h, w = x.shape
    (k_h, k_w), (d_h, d_w), (s_h, s_w) = module.kernel_size, module.dilation, module.stride
    out_h, out_w = (h - d_h * (k_h - 1) - 1) // s_h + 1, (w - d_w * (k_w - 1) - 1) // s_w + 1
    st_n, st_c, st_h, st_w = x.stride()
    patches = x.as_strided((c, k_h, k_w, n, out_h, out_w),
                           (st_c, d_h * st_h, d_w * st_w, st_n, s_h * st_h, s_w * st_w))
    return patches.reshape(c * k_h * k_w, n * out_h * out_w)


def input_second_moment(cols, bias):
    """Σ ā āᵀ over the columns of `cols` (d_in, rows), ā = [a; 1] when the layer has a bias.

    The bias block is assembled from column sums, [[Σaaᵀ, Σa], [Σaᵀ, R]], instead of concatenating a row of
    ones."""
    gram, n_rows = cols @ cols.T, cols.shape[1]
    if not bias:
        return gram
    sums = cols.sum(dim=1, keepdim=True)
    corner = torch.full((1, 1), float(n_rows), dtype=gram.dtype, device=gram.device)
    return torch.cat([torch.cat([gram, sums], 1), torch.cat([sums.T, corner], 1)], 0)


def output_grad_columns(module, grad):
    """∂loss/∂s as (d_out, rows), rows in the order of `input_columns` (for a conv one copy, channels first)."""
    if isinstance(module, nn.Conv2d):
        return grad.transpose(0, 1).reshape(grad.shape[1], -1)
    return grad.reshape(-1, grad.shape[-1]).T


class CapturedLayer:
    """One preconditioned module: forward hooks accumulate Σ āāᵀ and Σ ggᵀ while `capturing` is on.

    A module called several times in one forward pass (a recurrent cell) adds every call's rows. Calls with fewer
    rows than the factor's side are held back and summed in one product once enough rows are pending (or when the
    estimates are read): one (d × R)(R × d) product instead of many thin ones (an implementation choice for speed).
    Holding a call's input or output gradient until then keeps alive only what autograd itself holds for backward.
    """

    def __init__(self, name, module):
        self.name, self.module, self.kind = name, module, kind_of(module)
        self.capturing = False
        self.denominator = None  # (d_G, d_A, damping, d_G d_Aᵀ + damping) of the last eigendecomposition
        self.reset()
        self._handle = module.register_forward_hook(self._forward_hook)

    def reset(self):
        self.a_sum, self.a_rows, self.g_sum, self.first_batch = None, 0, None, None
        self._a_pending, self._g_pending = [], []

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
        with torch.no_grad():
            if self.first_batch is None:
                self.first_batch = x.shape[0]
            if self.kind == DIAG_KRON:
                # One-hot rows: Σ āāᵀ is diagonal with the counts of each index.
                stat = torch.bincount(x.reshape(-1), minlength=module.num_embeddings).to(module.weight.dtype)
                self.a_sum = stat if self.a_sum is None else self.a_sum + stat
                self.a_rows += x.numel()
            else:
                cols = input_columns(module, x.detach())
                self.a_rows += cols.shape[1]
                self._a_pending.append(cols)
                if sum(c.shape[1] for c in self._a_pending) >= cols.shape[0]:
                    self._flush_inputs()
        output.register_hook(self._grad_hook)

    def _grad_hook(self, grad):
        with torch.no_grad():
            cols = output_grad_columns(self.module, grad.detach())
            self._g_pending.append(cols)
            if sum(c.shape[1] for c in self._g_pending) >= cols.shape[0]:
                self._flush_output_grads()

    def _flush_inputs(self):
        # Factors in the weight's dtype (under AMP the activations may be half precision), in full precision.
        with torch.no_grad(), torch.autocast(self.module.weight.device.type, enabled=False):
            cols = torch.cat(self._a_pending, 1) if len(self._a_pending) > 1 else self._a_pending[0]
            has_bias = getattr(self.module, "bias", None) is not None
            stat = input_second_moment(cols.to(self.module.weight.dtype), has_bias)
        self.a_sum = stat if self.a_sum is None else self.a_sum + stat
        self._a_pending = []

    def _flush_output_grads(self):
        with torch.no_grad(), torch.autocast(self.module.weight.device.type, enabled=False):
            cols = torch.cat(self._g_pending, 1) if len(self._g_pending) > 1 else self._g_pending[0]
            cols = cols.to(self.module.weight.dtype)
            stat = cols @ cols.T
        self.g_sum = stat if self.g_sum is None else self.g_sum + stat
        self._g_pending = []

    def factor_estimates(self, loss_examples):
        """(Â, Ĝ) from the rows captured since the last reset, or None if nothing was captured."""
        if self._a_pending:
            self._flush_inputs()
        if self._g_pending:
            self._flush_output_grads()
        if self.a_sum is None or self.g_sum is None:
            return None
        return self.a_sum / self.a_rows, self.g_sum * loss_examples

    def eigen_denominator(self, d_g, d_a, damping):
        """d_G d_Aᵀ + λ for `precondition_eigen`, formed once per eigendecomposition and damping."""
        cached = self.denominator
        if cached is None or cached[0] is not d_g or cached[1] is not d_a or cached[2] != damping:
            self.denominator = (d_g, d_a, damping, eigen_denominator(d_g, d_a, damping, self.kind))
        return self.denominator[3]

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


def eigen_denominator(d_g, d_a, damping, kind):
    """d_G d_Aᵀ + λ, the eigenvalues of A ⊗ G + λI in the layout of Q_Gᵀ V Q_A (of Vᵀ-shaped blocks for an
    Embedding)."""
    if kind == DIAG_KRON:
        return torch.outer(d_a, d_g) + damping
    return torch.outer(d_g, d_a) + damping


def precondition_eigen(v, q_g, q_a, denominator, kind):
    """(A ⊗ G + λI)⁻¹ vec(V) = Q_G [(Q_Gᵀ V Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ: exact Tikhonov damping of the Kronecker
    product through the eigenbases (kfac-pytorch's EIGEN method; alecwangcq); `denominator` from
    `eigen_denominator`.

    For an Embedding (kind DIAG_KRON) V is vocab × d, A is diagonal (q_a unused) and V is preconditioned as
    the transpose of a Linear's gradient.
    """
    if kind == DIAG_KRON:
        return ((v @ q_g) / denominator) @ q_g.T
    return q_g @ ((q_g.T @ v @ q_a) / denominator) @ q_a.T


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
    """Eigendecomposition with eigenvalues clamped at 0 (kfac-pytorch), in float64 when float32 fails."""
    d, q = eigh_retrying_in_float64(matrix)
    return d.to(matrix.dtype).clamp_(min=0.0), q.to(matrix.dtype)
