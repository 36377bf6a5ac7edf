"""LLQR through the training-loop protocol on the benchmark model families (BatchNorm ResNet, tied-weight GPT)."""
import pytest
import torch

from llqr import LLQR
from scripts.benchmarks.common import SmallGPT, SmallResNet, make_closure


def _problem(name):
    torch.manual_seed(0)
    if name == "resnet":
        return SmallResNet(width=4, num_classes=5), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    return (SmallGPT(vocab=17, block=8, n_layer=1, n_head=2, n_embd=8), torch.randint(0, 17, (2, 8)),
            torch.randint(0, 17, (2, 8)))


@pytest.mark.parametrize("name", ["resnet", "gpt"])
@pytest.mark.parametrize("structure,divergence,base", [("e-kfac", "ngd", "sgd"), ("diagonal", "newton", "adamw"),
                                                       ("kfac", "gauss_newton", "adam")])
def test_protocol_steps_on_benchmark_models(name, structure, divergence, base):
    model, x, y = _problem(name)
    opt = LLQR(model.parameters(), model=model, base=base, lr=1e-2, block_structure=structure, divergence=divergence,
               update_preconditioner_every=2, precond_steps=2, precond_lr=1e-2, damping=1e-3, verbose=False)
    before = [p.detach().clone() for p in model.parameters()]
    closure = make_closure(model, x, y)
    losses = [opt.step(closure) for _ in range(3)]
    assert all(torch.isfinite(l) for l in losses)
    assert opt.llqr_state["refits"] == 2
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    for factors in opt.preconditioner_factors():
        assert all(torch.isfinite(t).all() for t in factors.values())
    if name == "resnet":  # BatchNorm counted only the 3 training forwards, none of the refits' forwards
        counts = [int(b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
        assert counts and all(c == 3 for c in counts)
