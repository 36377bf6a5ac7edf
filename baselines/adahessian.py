"""AdaHessian (Yao et al. 2021) from the maintained `pytorch_optimizer` package, behind the training-loop protocol.

pytorch_optimizer's AdaHessian estimates the Hessian diagonal by Hutchinson products through the gradient's
graph, so it needs `loss.backward(create_graph=True)` before its step. Here `step(closure)` does that itself:
it calls `closure(backward=False)` (forward pass, loss with its graph), differentiates with create_graph=True,
and hands over to the package's step, so a training loop calls `optimizer.step(closure)` as for any optimizer.
Outside such a loop, `loss.backward(create_graph=True); optimizer.step()` works as in the package.

What the package does not do (and we do not add): the paper's spatial averaging of the Hessian diagonal over
conv kernels. Our choice: the gradient clipping and the gradient averaging the closure applies after its own
backward do not happen on this path (the loss is differentiated here, not in the closure).
"""

import torch
from pytorch_optimizer import AdaHessian as _PackageAdaHessian


class AdaHessian(_PackageAdaHessian):
    """pytorch_optimizer.AdaHessian whose `step(closure)` follows the protocol (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None, hessian=None):
        if closure is None:
            return super().step(hessian=hessian)
        with torch.enable_grad():
            loss = closure(backward=False)
            params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
            # The gradient with its graph, for Hessian-vector products (autograd.grad rather than
            # backward(create_graph=True): same values, no parameter↔grad reference cycle).
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
        super().step(hessian=hessian)
        for p in params:  # release the double-backward graph the gradients still hold
            if p.grad is not None:
                p.grad = p.grad.detach()
        return loss.detach()
