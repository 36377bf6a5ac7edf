"""PSGD (Pooladzandi & Li, arXiv 2402.04553): SGD preconditioned by P = QᵀQ fitted online on a Lie group.

    from psgd import PSGD, random_l2
    opt = PSGD(model.parameters(), preconditioner="lra", lr=0.01, grad_clip_max_norm=1.0)
    def closure(backward=False):                     # PSGD differentiates the returned loss itself
        return loss_fn(model(x), y) + random_l2(model.parameters(), 1e-2)
    loss = opt.step(closure)
"""

from psgd.optimizer import PRECONDITIONERS, PSGD
from psgd.regularization import l2, random_l2

__all__ = ["PSGD", "PRECONDITIONERS", "random_l2", "l2"]
