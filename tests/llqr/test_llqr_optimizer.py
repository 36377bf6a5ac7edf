"""LLQR as a torch.optim optimizer: base-optimizer equivalence at U = I, resume, schedule, protocol, validation."""
import copy
import re

import pytest
import torch
from torch import nn

from llqr import LLQR


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _batches(n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _closure(model, opt, x, y):
    def closure(backward=True):
        if backward:
            opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if backward:
            loss.backward()
        return loss

    closure.inputs, closure.targets, closure.model = x, y, model
    return closure


def _train(model, opt, batches):
    losses = [opt.step(_closure(model, opt, x, y)) for x, y in batches]
    return torch.stack([l.detach() for l in losses])


BASES = [
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9,
                                                                                     weight_decay=1e-2)),
    ("sgd", dict(lr=0.1, momentum=0.0), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2),
     lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1), lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("base,kwargs,make_ref", BASES)
def test_identity_without_refits_equals_base(base, kwargs, make_ref, dtype):
    """U fixed at I (no refits: precond_steps=0) gives exactly torch.optim's base optimizer."""
    model, ref_model = _model(dtype), _model(dtype)
    opt = LLQR(model.parameters(), model=model, base=base, precond_steps=0, verbose=False, **kwargs)
    ref = make_ref(ref_model.parameters())
    batches = _batches(5, dtype)
    _train(model, opt, batches)
    _train(ref_model, ref, batches)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("structure", ["diagonal", "scalar"])
def test_adam_cancels_a_fixed_positive_diagonal_preconditioner(structure):
    """m/√v of U·g equals that of g for a fixed positive diagonal U (eps = 0): LLQR on Adam only acts through U's
    changes at refits (the README's note on diagonal U with an Adam base)."""
    def trained(base, **kwargs):
        model = _model()
        opt = LLQR(model.parameters(), model=model, base=base, block_structure=structure, precond_steps=0,
                   verbose=False, **kwargs)
        gen = torch.Generator().manual_seed(3)
        for factors in opt.preconditioner_factors():
            for u in factors.values():
                u.copy_(torch.rand(u.shape, generator=gen, dtype=u.dtype) * 4 + 0.1)
        _train(model, opt, _batches(5))
        return list(model.parameters())

    def reference(make):
        model = _model()
        _train(model, make(model.parameters()), _batches(5))
        return list(model.parameters())

    adam = trained("adamw", lr=1e-2, eps=0.0, weight_decay=0.1)
    for p, q in zip(adam, reference(lambda ps: torch.optim.AdamW(ps, lr=1e-2, eps=0.0, weight_decay=0.1))):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    sgd = trained("sgd", lr=0.1)  # the same U does act on an SGD base
    assert not all(torch.allclose(p, q) for p, q in zip(sgd, reference(lambda ps: torch.optim.SGD(ps, lr=0.1,
                                                                                                 momentum=0.9))))


def test_weight_decay_mask_equals_param_groups():
    """wd_exclude_norm_and_bias = coupled L2 on weights only ([C] `wd_mask` on Norm / bias)."""
    model, ref_model = _model(), _model()
    opt = LLQR(model.parameters(), model=model, lr=0.1, weight_decay=0.05, wd_exclude_norm_and_bias=True,
               precond_steps=0, verbose=False)
    decay = [p for p in ref_model.parameters() if p.ndim > 1]
    rest = [p for p in ref_model.parameters() if p.ndim <= 1]
    ref = torch.optim.SGD([{"params": decay, "weight_decay": 0.05}, {"params": rest}], lr=0.1, momentum=0.9)
    batches = _batches(4)
    _train(model, opt, batches)
    _train(ref_model, ref, batches)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def test_step_applies_preconditioned_gradient_with_decay_after_preconditioning():
    """One SGD step: θ ← θ − lr·(U g + wd·θ): the coupled decay is not preconditioned (§4.4 [C])."""
    model = _model()
    (x, y), = _batches(1)
    opt = LLQR(model.parameters(), model=model, lr=0.1, momentum=0.0, weight_decay=0.01, block_structure="kfac",
               update_preconditioner_every=1, precond_steps=5, precond_lr=0.05, verbose=False)
    before = [p.detach().clone() for p in model.parameters()]
    opt.refit(x, y)
    opt.update_preconditioner_until = 0  # no refit inside step: U is the one just fitted
    closure = _closure(model, opt, x, y)
    opt.step(closure)
    grads = [p.grad for p in model.parameters()]
    ug = opt.precondition(grads)
    assert any(not torch.allclose(a, b) for a, b in zip(ug, grads))
    for p, p0, u in zip(model.parameters(), before, ug):
        assert torch.allclose(p, p0 - 0.1 * (u + 0.01 * p0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("structure", ["diagonal", "e-kfac"])
@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_state_dict_round_trip_resumes_exactly(structure, base):
    kwargs = dict(base=base, lr=0.05, block_structure=structure, update_preconditioner_every=2, precond_steps=3,
                  precond_lr=0.01, ema_decay=0.9, verbose=False)
    model = _model()
    opt = LLQR(model.parameters(), model=model, **kwargs)
    batches = _batches(7)
    _train(model, opt, batches[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, batches[3:])

    resumed = _model(seed=5)
    resumed.load_state_dict(saved_model)
    opt2 = LLQR(resumed.parameters(), model=resumed, **kwargs)
    opt2.load_state_dict(saved_opt)
    assert opt2.llqr_state["step"] == 3 and opt2.llqr_state["refits"] == 2
    _train(resumed, opt2, batches[3:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    for f, h in zip(opt.preconditioner_factors(), opt2.preconditioner_factors()):
        assert all(torch.equal(f[k], h[k]) for k in f)


def test_refit_schedule_uses_sample_batch_of_its_own_size():
    """Refit at step % T == 0 incl. step 0, before the update, on sample_batch(precond_batch_size) [C]."""
    model = _model()
    calls = []
    pool = _batches(10, seed=7)

    def sample_batch(n):
        calls.append((n, opt.llqr_state["step"]))
        x, y = pool[len(calls)]
        return x[:n], y[:n]

    opt = LLQR(model.parameters(), model=model, sample_batch=sample_batch, update_preconditioner_every=3,
               update_preconditioner_until=7, precond_steps=2, precond_batch_size=5, verbose=False)
    _train(model, opt, _batches(9))
    assert calls == [(5, 0), (5, 3), (5, 6)]
    assert [h["step"] for h in opt.llqr_state["history"]] == [0, 3, 6]


def test_ema_and_positivity_clip():
    """U ← β·U_old + (1−β)·U_T on each factor, then diag U ≥ 1e-8 [C]."""
    model = _model()
    (x, y), = _batches(1)
    kwargs = dict(model=model, block_structure="diagonal", precond_steps=4, precond_lr=50.0, verbose=False)
    fresh = LLQR(model.parameters(), ema_decay=0.0, **kwargs)
    fresh.refit(x, y)
    raw = fresh.preconditioner_factors()
    assert any(float(f["diag"].min()) == 1e-8 for f in raw)  # the large lr drives some entries below 0
    ema = LLQR(model.parameters(), ema_decay=0.75, **kwargs)
    ema.refit(x, y)
    for f, r in zip(ema.preconditioner_factors(), raw):
        # where the raw U_T was not clipped, the EMA entry is 0.75·1 + 0.25·U_T
        ok = r["diag"] > 1e-8
        assert torch.allclose(f["diag"][ok], 0.75 + 0.25 * r["diag"][ok], rtol=0, atol=1e-13)
        assert float(f["diag"].min()) >= 1e-8


def test_refit_keeps_batchnorm_stats_and_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                          nn.Linear(12, 3)).double()
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    opt = LLQR(model.parameters(), model=model, block_structure="e-kfac", divergence="newton", precond_steps=3,
               verbose=False)
    stats = [b.clone() for b in model.buffers()]
    rng = torch.random.get_rng_state()
    opt.refit(x, y)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert torch.equal(rng, torch.random.get_rng_state())


def test_construction_prints_structure_table(capsys):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 3))
    LLQR(model.parameters(), model=model, block_structure="kfac")
    out = capsys.readouterr().out
    assert "block_structure=kfac" in out
    for pattern in (r"0 +Conv2d +57 +weight:kfac, bias:diagonal", r"1 +BatchNorm2d +6 +weight:diagonal, bias:diagonal",
                    r"3 +Linear +39 +weight:kfac, bias:diagonal"):
        assert re.search(pattern, out), pattern


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0. Must be >= 0.0."),
    (dict(momentum=-0.1), "Invalid momentum value: -0.1. Must be >= 0.0."),
    (dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0. Must be in [0, 1)."),
    (dict(weight_decay=-1e-4), "Invalid weight_decay value: -0.0001. Must be >= 0.0."),
    (dict(base="lion"), "Invalid base: lion. Must be one of ('sgd', 'adam', 'adamw')."),
    (dict(block_structure="kron"),
     "Invalid block_structure: kron. Must be one of ('diagonal', 'scalar', 'kfac', 'e-kfac', 'dense')."),
    (dict(divergence="kl"), "Invalid divergence: kl. Must be one of ('ngd', 'gauss_newton', 'newton')."),
    (dict(update_preconditioner_every=0), "Invalid update_preconditioner_every: 0. Must be an integer >= 1."),
    (dict(precond_steps=-1), "Invalid precond_steps: -1. Must be an integer >= 0."),
    (dict(precond_lr=-1e-3), "Invalid precond_lr: -0.001. Must be >= 0.0."),
    (dict(precond_clip=0.0), "Invalid precond_clip: 0.0. Must be None or > 0.0."),
    (dict(ema_decay=1.0), "Invalid ema_decay: 1.0. Must be in [0, 1)."),
    (dict(damping=-1.0), "Invalid damping: -1.0. Must be >= 0.0."),
    (dict(mode="fast"), "Invalid mode: fast. Must be one of ('paper', 'engineered')."),
    (dict(loss="hinge"), "Invalid loss: hinge. Must be one of ('cross_entropy', 'mse', 'binary_cross_entropy')."),
    (dict(label_smoothing=1.0), "Invalid label_smoothing: 1.0. Must be in [0, 1)."),
    (dict(label_smoothing=0.1, loss="mse"),
     "Invalid label_smoothing: 0.1 with loss 'mse'. Label smoothing applies to loss='cross_entropy' only."),
])
def test_argument_validation(kwargs, message):
    model = _model()
    with pytest.raises(ValueError) as info:
        LLQR(model.parameters(), model=model, verbose=False, **kwargs)
    assert str(info.value) == message


def test_engineered_mode_records_diagnostics():
    model = _model()
    opt = LLQR(model.parameters(), model=model, mode="engineered", precond_lr=1.0, precond_steps=5,
               divergence="gauss_newton", damping=1e-3, verbose=False)
    assert opt.scale_free and opt.refit_acceptance and opt.reuse_diagnostic
    (x, y), = _batches(1)
    entry = opt.refit(x, y)
    assert entry["accepted"] in (True, False) and entry["reuse_ratio"] == pytest.approx(1.0)  # U = I at first
