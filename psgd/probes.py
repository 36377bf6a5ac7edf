"""Gradients and (probe, Hessian-vector product) pairs from a closure (psgd_notes.md §2.1).

The closure follows the training-loop protocol: `closure(backward=False)` returns the loss with its graph and
leaves `.grad` alone. A closure without a `backward` argument (the reference's convention) is called as
`closure()` and must return the loss (or a tuple whose first item is the loss) without calling backward.
"""

import contextlib
import inspect

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def call_closure(closure, double_backward=False):
    """Run the closure under enable_grad; return (what it returned, the loss tensor).

    With `double_backward` (exact Hessian-vector products) scaled_dot_product_attention is restricted to its math
    backend, the one whose backward is itself differentiable (the flash and memory-efficient kernels have no
    double backward). Our choice; the reference predates these kernels."""
    attention = sdpa_kernel([SDPBackend.MATH]) if double_backward else contextlib.nullcontext()
    with torch.enable_grad(), attention:
        if _accepts_backward(closure):
            returned = closure(backward=False)
        else:
            returned = closure()
    loss = returned if isinstance(returned, torch.Tensor) else returned[0]
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise RuntimeError(
            "PSGD: the closure must return the loss with its graph (a tensor that requires grad); "
            "it computes the gradients itself with torch.autograd.grad."
        )
    return returned, loss


def _accepts_backward(closure):
    try:
        parameters = inspect.signature(closure).parameters
    except (TypeError, ValueError):
        return False
    return "backward" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def gradients(loss, params, create_graph=False):
    """∂loss/∂params by torch.autograd.grad; unused parameters get zero gradients."""
    try:
        grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    except RuntimeError as error:
        if "backward through the graph a second time" in str(error):
            raise RuntimeError(
                "PSGD: the closure called loss.backward(); PSGD differentiates the loss itself. Give the closure a "
                "`backward=True` argument and call it with backward=False (training-loop protocol), or return the "
                "loss without calling backward."
            ) from error
        raise
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def exact_hvp(grads, params, vs):
    """H v by double backward through grads built with create_graph=True (reference: autograd.grad(grads, params, vs))."""
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if not live:
        return [torch.zeros_like(p) for p in params]
    outputs, probes = (grads, vs) if len(live) == len(grads) else ([grads[i] for i in live], [vs[i] for i in live])
    try:
        found = torch.autograd.grad(outputs, params, probes, allow_unused=True)
    except RuntimeError as error:
        if "derivative for" in str(error) and "not implemented" in str(error):
            raise RuntimeError(
                f"PSGD: exact Hessian-vector products need double backward, which an operation of this model lacks "
                f"({error}). Use exact_hessian_vector_product=False (finite differences)."
            ) from error
        raise
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, found)]
