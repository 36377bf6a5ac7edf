"""The protocol wrapper of pytorch_optimizer's AdaHessian takes the same steps as the package used directly."""

import copy

import torch
import torch.nn.functional as F
from pytorch_optimizer import AdaHessian as PackageAdaHessian

from baselines import AdaHessian
from tests.baselines.helpers import SmallCNN, protocol_closure


def test_step_with_closure_equals_the_package_after_backward_create_graph():
    torch.manual_seed(0)
    model = SmallCNN()
    reference = copy.deepcopy(model)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    ours, theirs = AdaHessian(model.parameters(), lr=0.1), PackageAdaHessian(reference.parameters(), lr=0.1)
    closure = protocol_closure(model, x, y)
    losses = []
    for seed in range(3):
        torch.manual_seed(seed)  # the same Rademacher probes on both sides
        losses.append(ours.step(closure).item())
        torch.manual_seed(seed)
        reference.zero_grad(set_to_none=True)
        loss = F.cross_entropy(reference(x), y)
        grads = torch.autograd.grad(loss, list(reference.parameters()), create_graph=True)
        for p, g in zip(reference.parameters(), grads):
            p.grad = g
        theirs.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0.0, atol=0.0)
    assert losses[-1] < losses[0]
    assert all(p.grad is None or p.grad.grad_fn is None for p in model.parameters())  # no graph left behind
