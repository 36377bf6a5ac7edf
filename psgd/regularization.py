"""Weight decay as the paper's scripts do it: an L2 term added to the loss inside the closure (psgd_notes.md §0
item 4). PSGD's paper-era optimizer has no weight decay of its own; `PSGD(weight_decay=...)` is the optional,
decoupled alternative of later ports.
"""

import torch


def random_l2(params, decay):
    """The randomised L2 of the paper's CIFAR scripts: Σ decay·r∘θ² with r ~ U(0, 1) drawn per entry on each call.

    Its gradient 2·decay·r∘θ is decay·θ in expectation, i.e. the paper's ½λθᵀθ with λ = decay. Add it to the
    loss inside the closure. With finite-difference Hessian-vector products the closure must draw the same r on
    both calls (restore the RNG state at the top of the closure; the training loop's closure does).
    """
    total = 0.0
    for p in params:
        if p.requires_grad:
            total = total + decay * torch.sum(torch.rand_like(p) * p * p)
    return total


def l2(params, decay):
    """The paper's L2 term ½·decay·Σθ² (deterministic form of `random_l2`)."""
    total = 0.0
    for p in params:
        if p.requires_grad:
            total = total + 0.5 * decay * torch.sum(p * p)
    return total
