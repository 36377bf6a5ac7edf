"""The second-order protocol: closures that recompute the loss, keywords the constructor receives."""

import pytest
import torch

from harness.protocol import LossClosure, build_optimizer, loss_function
from tests.harness.helpers import run


class DoubleBackwardProbe(torch.optim.Optimizer):
    """A test optimizer that uses the protocol the way PSGD does: closure(backward=False), autograd.grad,
    a Hessian-vector product, a second closure call; it records what it saw."""

    seen = []

    def __init__(self, params, model, loss, sample_batch, lr=0.1):
        super().__init__(params, {"lr": lr})
        self.model, self.loss_kind, self.sample_batch = model, loss, sample_batch

    @torch.no_grad()
    def step(self, closure):
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.enable_grad():
            loss = closure(backward=False)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            vectors = [torch.randn_like(p) for p in params]
            hvp = torch.autograd.grad(grads, params, grad_outputs=vectors)
            again = closure(backward=False)
        refit_inputs, _ = self.sample_batch(7)
        DoubleBackwardProbe.seen.append({
            "same_loss": torch.equal(loss, again), "grad_untouched": all(p.grad is None for p in params),
            "hvp_finite": all(torch.isfinite(h).all() for h in hvp), "loss_kind": self.loss_kind,
            "has_batch": closure.inputs is not None and closure.model is self.model, "refit_batch": len(refit_inputs),
        })
        for group in self.param_groups:
            for p, g in zip(group["params"], grads):
                p.add_(g, alpha=-group["lr"])
        return loss


def test_closure_path_through_the_loop(tmp_path):
    DoubleBackwardProbe.seen.clear()
    overrides = ["model=xor_rnn", "dataset=delayed_xor", "dataset.seq_len=4", "dataset.eval_size=64",
                 "trainer.max_steps=3", "optimizer._target_=tests.harness.test_protocol.DoubleBackwardProbe",
                 "~optimizer.momentum", "~optimizer.dampening", "~optimizer.weight_decay", "~optimizer.nesterov",
                 "trainer.l2=0.01", "trainer.l2_randomized=true"]
    run(overrides, tmp_path)
    assert len(DoubleBackwardProbe.seen) == 3
    for seen in DoubleBackwardProbe.seen:
        assert seen == {"same_loss": True, "grad_untouched": True, "hvp_finite": True, "loss_kind": "binary_cross_entropy",
                        "has_batch": True, "refit_batch": 7}


def test_repeated_closure_calls_see_the_same_dropout_mask():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 50), torch.nn.Dropout(0.5), torch.nn.Linear(50, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    closure = LossClosure(model, x, y, loss_function("cross_entropy"))
    first, second = closure(backward=False), closure()
    assert torch.equal(first, second)
    assert all(p.grad is not None for p in model.parameters())


def test_torch_optimizers_get_only_the_keywords_they_accept():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1}, model, "cross_entropy", lambda n: None)
    assert isinstance(optimizer, torch.optim.SGD)
    probe = build_optimizer({"_target_": "tests.harness.test_protocol.DoubleBackwardProbe"}, model, "mse", lambda n: "batch")
    assert probe.model is model and probe.loss_kind == "mse" and probe.sample_batch(1) == "batch"


def test_an_optimizer_refuses_a_loss_kind_it_has_no_curvature_for():
    from harness.errors import UnsupportedLossError
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UnsupportedLossError, match=r"optimizer llqr.LLQR needs the output curvature of a "
                                                  r"cross_entropy / mse / binary_cross_entropy loss; this model's "
                                                  r"loss kind is 'objective'"):
        build_optimizer({"_target_": "llqr.LLQR", "verbose": False}, model, "objective", lambda n: None)
    assert build_optimizer({"_target_": "llqr.LLQR", "verbose": False}, model, "mse", lambda n: None).loss == "mse"


def test_the_training_label_smoothing_reaches_an_optimizer_that_takes_it():
    model = torch.nn.Linear(3, 2)
    llqr = build_optimizer({"_target_": "llqr.LLQR", "verbose": False}, model, "cross_entropy", None, 0.1)
    assert llqr.label_smoothing == 0.1
    own = build_optimizer({"_target_": "llqr.LLQR", "verbose": False, "label_smoothing": 0.2}, model,
                          "cross_entropy", None, 0.1)
    assert own.label_smoothing == 0.2  # an explicit optimizer.label_smoothing wins
    assert isinstance(build_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1}, model, "cross_entropy", None, 0.1),
                      torch.optim.SGD)


def test_grad_clip_warns_when_the_optimizer_differentiates_the_loss_itself():
    model = torch.nn.Linear(4, 1)
    closure = LossClosure(model, torch.randn(8, 4), torch.randn(8, 1), loss_function("mse"), grad_clip=0.5)
    with pytest.warns(UserWarning, match=r"trainer.grad_clip=0.5 is not applied: the optimizer differentiates the "
                                         r"loss itself .*PSGD: optimizer.grad_clip_max_norm"):
        loss = closure(backward=False)
    assert loss.requires_grad and all(p.grad is None for p in model.parameters())


def test_grad_clip_is_applied_in_the_closure():
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4) * 100, torch.randn(16, 1)
    LossClosure(model, x, y, loss_function("mse"), grad_clip=0.5)()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert abs(float(norm) - 0.5) < 1e-5
