"""The PSGD optimizer as a torch.optim.Optimizer: arguments, closures, HVPs, resumption, precision, options."""

import copy

import pytest
import torch

from psgd import PSGD, PRECONDITIONERS, random_l2

F64 = torch.float64


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def _data(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 4, generator=g).to(dtype), torch.randn(32, 2, generator=g).to(dtype)


def _protocol_closure(model, x, y, calls=None, decay=1e-3):
    """A closure of the training-loop protocol: restores the RNG at each call, backward=False returns the graph."""
    rng_state = torch.get_rng_state()

    def closure(backward=True):
        torch.set_rng_state(rng_state)
        if calls is not None:
            calls.append(backward)
        if backward:
            model.zero_grad()
        loss = 0.5 * (model(x) - y).pow(2).sum(1).mean() + random_l2(model.parameters(), decay)
        if backward:
            loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0. Must be >= 0.0."),
    (dict(lr_preconditioner=-0.1), "Invalid preconditioner learning rate: -0.1. Must be >= 0.0."),
    (dict(rank=-1), "Invalid rank: -1. Must be an integer >= 0."),
    (dict(momentum=1.0), "Invalid momentum: 1.0. Must be in [0.0, 1.0)."),
    (dict(grad_clip_max_norm=0.0), "Invalid grad_clip_max_norm: 0.0. Must be None or > 0.0."),
    (dict(preconditioner_update_probability=1.5),
     "Invalid preconditioner update probability: 1.5. Must be in [0.0, 1.0]."),
    (dict(preconditioner_init_scale=0.0), "Invalid preconditioner init scale: 0.0. Must be > 0.0."),
    (dict(preconditioner="adam"), "Invalid preconditioner: 'adam'. Must be one of xmat, lra, diag, newton, kron."),
    (dict(step_normalizer="3rd"), "Invalid step_normalizer: '3rd'. Must be '1st' or '2nd'."),
    (dict(preconditioner_type="fisher"), "Invalid preconditioner_type: 'fisher'. Must be 'newton' or 'whitening'."),
    (dict(update_probability_schedule="cosine"),
     "Invalid update_probability_schedule: 'cosine'. Must be None or 'exp_decay'."),
    (dict(weight_decay=-1e-4), "Invalid weight_decay value: -0.0001. Must be >= 0.0."),
    (dict(kron_max_dense_size=0), "Invalid kron_max_dense_size: 0. Must be an integer >= 1."),
    (dict(rng_seed=1.5), "Invalid rng_seed: 1.5. Must be None or an integer."),
])
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        PSGD(_mlp().parameters(), **kwargs)
    assert str(info.value) == message


def test_step_needs_a_closure_that_does_not_backward():
    model = _mlp()
    x, y = _data()
    opt = PSGD(model.parameters())
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()

    def torch_style_closure():
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="called loss.backward"):
        opt.step(torch_style_closure)


@pytest.mark.parametrize("exact", [True, False])
def test_protocol_closure_is_called_without_backward(exact):
    """step() calls closure(backward=False) once (exact HVP) or twice (finite differences) and returns the first loss."""
    model = _mlp()
    x, y = _data()
    calls = []
    closure = _protocol_closure(model, x, y, calls)
    opt = PSGD(model.parameters(), preconditioner="lra", exact_hessian_vector_product=exact)
    expected = closure(backward=False).item()
    calls.clear()
    loss = opt.step(closure)
    assert calls == ([False] if exact else [False, False])
    assert loss.item() == expected and not loss.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_closure_loop_solves_a_quadratic(preconditioner):
    """A torch.optim-style loop `loss = opt.step(closure)` on ½θᵀAθ − bᵀθ reaches the analytic minimiser A⁻¹b."""
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, dtype=F64))
    A = basis @ torch.diag(torch.logspace(-1, 1, 12, dtype=F64)) @ basis.t()
    b = torch.randn(12, dtype=F64)
    theta = torch.nn.Parameter(torch.zeros(3, 4, dtype=F64))
    opt = PSGD([theta], preconditioner=preconditioner, lr=0.5, lr_preconditioner=0.1, rank=4, rng_seed=0)

    def closure():
        t = theta.reshape(-1)
        return 0.5 * t @ A @ t - b @ t

    for _ in range(500):
        opt.step(closure)
    solution = torch.linalg.solve(A, b)
    assert (theta.detach().reshape(-1) - solution).norm() / solution.norm() < 0.05


def test_finite_differences_approximate_exact_hvp():
    """notes §5.2 item 7(f): in float64 the secant (g(θ + δv) − g(θ))/δ equals Hv within O(δ) (δ = sqrt(eps))."""
    model = _mlp(dtype=F64)
    x, y = _data(dtype=F64)
    params = list(model.parameters())
    closure = _protocol_closure(model, x, y)
    _, _, vs_exact, hs_exact = PSGD(params, rng_seed=3)._exact_pair(closure, params)
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():  # as inside step()
        _, _, vs_fd, hs_fd, _ = PSGD(params, rng_seed=3)._finite_difference_pair(closure, params)
        for p, t in zip(params, theta):
            p.copy_(t)
    for v1, v2, h1, h2 in zip(vs_exact, vs_fd, hs_exact, hs_fd):
        torch.testing.assert_close(v2, v1, rtol=1e-12, atol=1e-12)
        assert (h2 - h1).abs().max() <= 1e-5 * (1 + h1.abs().max())


@pytest.mark.parametrize("preconditioner, exact, seed", [
    ("lra", True, None), ("xmat", False, None), ("diag", True, 5), ("newton", False, 5), ("kron", True, 5)])
def test_state_dict_resumes_exactly(preconditioner, exact, seed):
    """Save after 5 steps, continue 5 steps; a fresh optimizer loaded from the save continues identically.
    In paper mode (rng_seed None) the caller saves and restores torch's RNG state too (here the closure also draws
    random L2 coefficients from it); with rng_seed the optimizer's state_dict is enough (deterministic closure)."""
    x, y = _data()
    decay = 1e-3 if seed is None else 0.0

    def make():
        model = _mlp()
        return model, PSGD(model.parameters(), preconditioner=preconditioner, rank=3, momentum=0.9, rng_seed=seed,
                           model=model, kron_max_dense_size=6,  # kron: folded biases, dense, diag and norm factors
                           preconditioner_update_probability=0.5, exact_hessian_vector_product=exact,
                           grad_clip_max_norm=1.0)

    model, opt = make()
    for _ in range(5):
        opt.step(_protocol_closure(model, x, y, decay=decay))
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state())
    for _ in range(5):
        opt.step(_protocol_closure(model, x, y, decay=decay))
    expected = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)  # scramble the global RNG: only the saved state may matter
    model2, opt2 = make()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    if seed is None:
        torch.set_rng_state(saved[2])
    for _ in range(5):
        opt2.step(_protocol_closure(model2, x, y, decay=decay))
    for p, q in zip(model2.parameters(), expected):
        assert torch.equal(p, q)


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("exact", [True, False])
def test_bf16_parameters_keep_float32_state(preconditioner, exact):
    model = _mlp(dtype=torch.bfloat16)
    x, y = _data(dtype=torch.bfloat16)
    opt = PSGD(model.parameters(), preconditioner=preconditioner, rank=2, momentum=0.9,
               exact_hessian_vector_product=exact, lr_preconditioner=0.1)
    for _ in range(3):
        loss = opt.step(_protocol_closure(model, x, y))
    assert torch.isfinite(loss)
    tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in tensors)


def test_without_preconditioner_updates_it_is_sgd_with_weight_decay():
    """Update probability 0 keeps P = I: PSGD with decoupled weight decay is then torch.optim.SGD's step."""
    x, y = _data()
    model, reference = _mlp(), _mlp()
    opt = PSGD(model.parameters(), lr=0.1, preconditioner_update_probability=0.0, weight_decay=0.01)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(5):
        opt.step(lambda: 0.5 * (model(x) - y).pow(2).sum(1).mean())
        sgd.zero_grad()
        (0.5 * (reference(x) - y).pow(2).sum(1).mean()).backward()
        sgd.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_private_rng_is_not_reset_by_the_protocol_closure():
    """The protocol closure restores the global RNG at each call; with the global RNG the update coin would repeat
    every step. With rng_seed the optimizer's coin is its own: about half of 200 steps update (FD: 2 calls)."""
    model = _mlp()
    x, y = _data()
    calls = []
    opt = PSGD(model.parameters(), preconditioner="xmat", preconditioner_update_probability=0.5,
               exact_hessian_vector_product=False, rng_seed=0)
    for _ in range(200):
        opt.step(_protocol_closure(model, x, y, calls))
    assert 70 < len(calls) - 200 < 130


def test_random_l2_has_the_gradient_of_half_lambda_theta_squared_in_expectation():
    """d/dθ Σ decay·r·θ² = 2·decay·r·θ with r ~ U(0, 1): decay·θ on average (the paper's ½λθᵀθ, λ = decay)."""
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(50, dtype=F64))
    mean = sum(torch.autograd.grad(random_l2([theta], 0.1), theta)[0] for _ in range(4000)) / 4000
    torch.testing.assert_close(mean, 0.1 * theta.detach(), rtol=0, atol=0.01)


@pytest.mark.parametrize("options", [dict(step_normalizer="2nd", lr_preconditioner=0.1),
                                     dict(preconditioner_type="whitening"),
                                     dict(update_probability_schedule="exp_decay")])
@pytest.mark.parametrize("preconditioner", ["lra", "xmat", "kron"])
def test_later_version_options_still_train(options, preconditioner):
    """The later versions' options (off by default) run and lower the loss of a small regression."""
    model = _mlp()
    x, y = _data()
    opt = PSGD(model.parameters(), preconditioner=preconditioner, lr=0.05, rank=3, rng_seed=0, **options)
    closure = _protocol_closure(model, x, y)
    first = opt.step(closure).item()
    for _ in range(100):
        last = opt.step(closure).item()
    assert last < 0.8 * first


def test_parameter_groups_have_their_own_preconditioners():
    """Two groups: each gets its own preconditioner and lr; a group added later is initialised too."""
    model = _mlp()
    x, y = _data()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = PSGD([{"params": first, "preconditioner": "lra", "rank": 2}], lr=0.05, rng_seed=0)
    opt.add_param_group({"params": second, "preconditioner": "kron", "lr": 0.0})
    assert opt.preconditioner_state(0)["U"].shape == (sum(p.numel() for p in first), 2)
    assert len(opt.preconditioner_state(1)) == 2
    frozen = [p.detach().clone() for p in second]
    moved = [p.detach().clone() for p in first]
    for _ in range(3):
        opt.step(_protocol_closure(model, x, y))
    assert all(torch.equal(p, q) for p, q in zip(second, frozen))  # lr 0 in the second group
    assert not any(torch.equal(p, q) for p, q in zip(first, moved))


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(8, 24), torch.nn.Linear(8, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8))


def test_exact_hvp_through_scaled_dot_product_attention():
    """The fused attention kernels have no double backward; exact HVPs run attention on its math backend and
    agree with finite differences (float32: within a few percent)."""
    torch.manual_seed(0)
    model = _Attention()
    x, y = torch.randn(4, 5, 8), torch.randn(4, 5, 2)
    params = list(model.parameters())
    closure = _protocol_closure(model, x, y, decay=0.0)
    _, _, _, hs_exact = PSGD(params, rng_seed=1)._exact_pair(closure, params)
    with torch.no_grad():
        _, _, _, hs_fd, _ = PSGD(params, rng_seed=1)._finite_difference_pair(closure, params)
    exact, fd = torch.cat([h.reshape(-1) for h in hs_exact]), torch.cat([h.reshape(-1) for h in hs_fd])
    assert (exact - fd).norm() / exact.norm() < 0.05


def test_xmat_loading_an_older_state_into_the_same_optimizer_resumes_exactly():
    """Loading a state_dict replaces a and b; the cached diagonals of P must not survive it."""
    x, y = _data()

    def make():
        model = _mlp()
        return model, PSGD(model.parameters(), preconditioner="xmat", momentum=0.9, rng_seed=0,
                           preconditioner_update_probability=0.5, exact_hessian_vector_product=False)

    model, opt = make()
    for _ in range(3):
        opt.step(_protocol_closure(model, x, y, decay=0.0))
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(_protocol_closure(model, x, y, decay=0.0))
    model2, opt2 = make()
    for m, o in ((model, opt), (model2, opt2)):
        m.load_state_dict(saved[0])
        o.load_state_dict(saved[1])
        for _ in range(3):
            o.step(_protocol_closure(m, x, y, decay=0.0))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_preconditioner_diagonal_is_the_diagonal_of_the_dense_p(preconditioner):
    from psgd import kron, lra, newton, xmat

    model = _mlp(dtype=F64)
    x, y = _data(dtype=F64)
    opt = PSGD(model.parameters(), preconditioner=preconditioner, lr=0.1, lr_preconditioner=0.1, rank=2, rng_seed=0)
    closure = _protocol_closure(model, x, y)
    for _ in range(5):
        opt.step(closure)
    params = opt.param_groups[0]["params"]
    diagonal = opt.preconditioner_diagonal()
    assert [d.shape for d in diagonal] == [p.shape for p in params]
    if preconditioner == "kron":
        for block in opt.param_groups[0]["kron_blocks"]:
            matrix = kron.block_matrix([diagonal[i] for i in block], len(block) == 2)
            Q = kron.dense_q(opt.state[params[block[0]]])
            expected = torch.diagonal(Q.t() @ Q).reshape(matrix.shape[1], matrix.shape[0]).t()  # column-major vec
            torch.testing.assert_close(matrix, expected)
    else:
        module = {"xmat": xmat, "lra": lra, "diag": lra, "newton": newton}[preconditioner]
        Q = module.dense_q(opt.state[params[0]])
        torch.testing.assert_close(torch.cat([d.reshape(-1) for d in diagonal]), torch.diagonal(Q.t() @ Q))
    assert torch.cat([d.reshape(-1) for d in diagonal]).std() > 0, "five updates have moved P away from c·I"


def test_checkpoint_script_reports_the_diagonal_of_a_saved_preconditioner(tmp_path, capsys):
    """scripts/psgd_preconditioner_diagonal.py on a checkpoint in train.py's layout prints the extremes of an
    XMat state's a² + flip(b²)."""
    from scripts.psgd_preconditioner_diagonal import main

    model = _mlp()
    opt = PSGD(model.parameters(), preconditioner="xmat", preconditioner_init_scale=0.1)
    opt.step(_protocol_closure(model, *_data()))  # creates the state (and moves P a little)
    opt.state[opt.param_groups[0]["params"][0]]["a"].copy_(torch.linspace(1.0, 2.0, 58))
    opt.state[opt.param_groups[0]["params"][0]]["b"].zero_()
    torch.save({"optimizer": opt.state_dict(), "step": 7}, tmp_path / "step.pt")
    main([str(tmp_path / "step.pt")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(step 7): diag(P)")
    index, n, low, *quantiles, high = lines[2].split()
    assert (index, n, float(low), float(high)) == ("0", "58", 1.0, 4.0)  # a from 1 to 2: a² from 1 to 4
