"""The cached linearisation (llqr/tangent.py): same J·u as the eager JVP, adjoint of the VJP, safe fallbacks."""
import copy

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from llqr import LLQR
from llqr.objective import LQRObjective
from llqr.tangent import LinearizationCache, split_tangent_graph
from scripts.benchmarks.common import SmallGPT, SmallLSTM, SmallResNet, make_closure


def _problem(name, dtype=torch.float64):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "resnet":  # BatchNorm in training mode
        model = SmallResNet(width=4, num_classes=5)
        x, y = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (4,), generator=g)
    elif name == "gpt":  # tied embeddings, attention, LayerNorm, GELU
        model = SmallGPT(vocab=17, block=8, n_layer=1, n_head=2, n_embd=8)
        x, y = torch.randint(0, 17, (2, 8), generator=g), torch.randint(0, 17, (2, 8), generator=g)
    elif name == "lstm":
        model = SmallLSTM(vocab=11, n_embd=6, hidden=5)
        x, y = torch.randint(0, 11, (3, 4), generator=g), torch.randint(0, 11, (3, 4), generator=g)
    elif name == "tuple":  # a model fed a tuple of tensors (as the seq2seq Transformer)
        model = _TwoInputs()
        x = (torch.randn(4, 3, generator=g, dtype=dtype), torch.randint(0, 5, (4,), generator=g))
        y = torch.randint(0, 3, (4,), generator=g)
    else:  # dropout in training mode: the masks must be those of the eager forward
        model = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.Tanh(), nn.Linear(7, 3))
        x, y = torch.randn(8, 5, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)
    return model.to(dtype), x, y


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.lin = nn.Embedding(5, 3), nn.Linear(3, 3)

    def forward(self, inputs):
        features, tokens = inputs
        return self.lin(torch.tanh(features + self.embed(tokens)))


def _dot(a, b):
    return sum((p * q).sum() for p, q in zip(a, b))


@pytest.mark.parametrize("name", ["resnet", "gpt", "lstm", "dropout", "tuple"])
def test_cached_products_equal_eager_and_are_adjoint_to_the_vjp(name):
    model, x, y = _problem(name)
    params = list(model.parameters())
    cache = LinearizationCache()
    cached = LQRObjective(model, params, "cross_entropy", x, y, "ngd", linearization_cache=cache)
    cached._rng.reset()  # the eager objective pins the same RNG state: same dropout masks
    eager = LQRObjective(model, params, "cross_entropy", x, y, "ngd")
    assert cache.used == 1 and cache.fallbacks == 0
    gen = torch.Generator().manual_seed(2)
    u = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params)
    ju = cached._jvp_fn(u)
    _, ju_eager = torch.func.jvp(eager._forward, (eager._theta,), (u,))
    assert torch.equal(ju, ju_eager)
    # independent check: <v, J u> = <Jᵀ v, u> with Jᵀ from reverse mode
    v = torch.randn(ju.shape, generator=gen, dtype=ju.dtype)
    lhs, rhs = (v * ju).sum(), _dot(eager._vjp_fn(v)[0], u)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(float(rhs)))
    assert all(torch.equal(a, b) for a, b in zip(cached.grad_u(list(u)), eager.grad_u(list(u))))


def test_trace_is_reused_across_refits_and_retraced_for_a_new_shape():
    model, x, y = _problem("resnet")
    params = list(model.parameters())
    cache = LinearizationCache()
    LQRObjective(model, params, "cross_entropy", x, y, "ngd", linearization_cache=cache)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    moved = LQRObjective(model, params, "cross_entropy", x, y, "ngd", linearization_cache=cache)
    eager = LQRObjective(model, params, "cross_entropy", x, y, "ngd")
    u = [torch.ones_like(p) for p in params]
    assert all(torch.equal(a, b) for a, b in zip(moved.grad_u(u), eager.grad_u(u)))
    LQRObjective(model, params, "cross_entropy", x[:2], y[:2], "ngd", linearization_cache=cache)
    assert len(cache.entries) == 2 and cache.used == 3


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.lin(x)
        return self.out(torch.tanh(h) if h.mean() > 0 else torch.sin(h))


def test_data_dependent_control_flow_falls_back_to_the_eager_jvp():
    torch.manual_seed(0)
    model = _Branchy().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    cache = LinearizationCache()
    with pytest.warns(UserWarning, match="could not be traced"):
        objective = LQRObjective(model, list(model.parameters()), "cross_entropy", x, y, linearization_cache=cache)
    assert objective._jvp_fn is None and cache.fallbacks == 1 and cache.used == 0
    eager = LQRObjective(model, list(model.parameters()), "cross_entropy", x, y)
    u = [torch.ones_like(p) for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(objective.grad_u(u), eager.grad_u(u)))


def test_split_rejects_a_tangent_op_writing_into_a_primal_value():
    def f(p, t):
        a = p * 2.0
        a.add_(t)  # the tangent pass would overwrite a primal intermediate
        return p, a

    gm = make_fx(f)(torch.ones(3), torch.ones(3))
    assert split_tangent_graph(gm, 1) is None


def _train_copy(model, x, y, steps, **llqr_kwargs):
    """A copy of `model` trained `steps` steps by LLQR (refit every 2 steps, 3 inner steps): (parameters, LLQR)."""
    m = copy.deepcopy(model)
    opt = LLQR(m.parameters(), model=m, lr=1e-2, update_preconditioner_every=2, precond_steps=3, precond_lr=1e-2,
               verbose=False, **llqr_kwargs)
    closure = make_closure(m, x, y)
    for _ in range(steps):
        opt.step(closure)
    return [p.detach().clone() for p in m.parameters()], opt


@pytest.mark.parametrize("structure", ["diagonal", "e-kfac"])
def test_llqr_training_is_identical_with_and_without_the_cache(structure):
    model, x, y = _problem("resnet")
    runs = []
    for cached in (True, False):
        params, opt = _train_copy(model, x, y, 5, block_structure=structure, cached_linearization=cached)
        runs.append(params)
        assert (opt._linearization_cache.used == 3) if cached else opt._linearization_cache is None
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_compiled_tangent_graph_matches_the_eager_jvp_and_trains_like_it():
    model, x, y = _problem("gpt", dtype=torch.float32)  # LayerNorm, softmax and GELU tangents get fused
    params = list(model.parameters())
    cache = LinearizationCache(compile=True)
    cached = LQRObjective(model, params, "cross_entropy", x, y, "ngd", linearization_cache=cache)
    eager = LQRObjective(model, params, "cross_entropy", x, y, "ngd")
    gen = torch.Generator().manual_seed(2)
    u = tuple(torch.randn(p.shape, generator=gen) for p in params)
    _, ju_eager = torch.func.jvp(eager._forward, (eager._theta,), (u,))
    ju = cached._jvp_fn(u)
    assert cache.used == 1 and (ju - ju_eager).abs().max() <= 1e-5 * ju_eager.abs().max()
    runs = [_train_copy(model, x, y, 3, cached_linearization=mode)[0] for mode in (True, "compiled")]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"Invalid cached_linearization: 'fast'. Must be True, False or 'compiled'."):
        LLQR(model.parameters(), model=model, cached_linearization="fast", verbose=False)
