"""Shampoo against AdaGrad (torch.optim and the dense full-matrix form), the dense Kronecker formula computed with
scipy, the grafting methods' step norms (torch.optim), blocking shapes, resuming, validation and training."""

import pytest
import scipy.linalg
import torch

from baselines import Shampoo
from baselines.shampoo_blocks import block_slices, inverse_root, merge_small_dims
from tests.baselines.helpers import LinearCellRNN, SmallCNN, assert_resumes_exactly, delayed_xor_batch, training_losses


def _gradients(shape, steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)]


def _run_on_gradients(optimizer, param, gradients):
    """Feed a fixed gradient sequence; return the step taken at each call."""
    steps = []
    for grad in gradients:
        before = param.detach().clone()
        param.grad = grad.clone()
        optimizer.step()
        steps.append(param.detach() - before)
    return steps


def _fractional_power(matrix, power):
    return torch.from_numpy(scipy.linalg.fractional_matrix_power(matrix.numpy(), power).real)


def test_vector_with_unit_blocks_is_diagonal_adagrad():
    grads = _gradients((7,), 5, seed=0)
    p, q = torch.zeros(7, dtype=torch.float64, requires_grad=True), torch.zeros(7, dtype=torch.float64, requires_grad=True)
    shampoo = Shampoo([p], lr=0.1, betas=(0.0, 1.0), epsilon=1e-30, max_preconditioner_dim=1, precondition_frequency=1)
    adagrad = torch.optim.Adagrad([q], lr=0.1, eps=0.0)
    for a, b in zip(_run_on_gradients(shampoo, p, grads), _run_on_gradients(adagrad, q, grads)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_vector_is_full_matrix_adagrad():
    grads = _gradients((5,), 4, seed=1)
    p = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    eps = 1e-3
    shampoo = Shampoo([p], lr=0.1, betas=(0.0, 1.0), epsilon=eps, precondition_frequency=1)
    total = torch.zeros(5, 5, dtype=torch.float64)
    for step, grad in zip(_run_on_gradients(shampoo, p, grads), grads):
        total += torch.outer(grad, grad)  # full-matrix AdaGrad: -η (Σ g gᵀ + εI)^{-1/2} g (order 1: exponent 1/2)
        expected = -0.1 * _fractional_power(total + eps * torch.eye(5, dtype=torch.float64), -0.5) @ grad
        torch.testing.assert_close(step, expected, rtol=1e-8, atol=1e-12)


def test_matrix_without_grafting_equals_the_dense_kronecker_formula():
    grads = _gradients((4, 3), 4, seed=2)
    p = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    eps, lr = 1e-3, 0.5
    # max_preconditioner_dim=4 keeps (4, 3) a matrix (at 1024 merge_small_dims would make it a 12-vector).
    shampoo = Shampoo([p], lr=lr, betas=(0.0, 1.0), epsilon=eps, precondition_frequency=1, max_preconditioner_dim=4)
    left, right = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    for step, grad in zip(_run_on_gradients(shampoo, p, grads), grads):
        left, right = left + grad @ grad.T, right + grad.T @ grad
        # vec(L^{-1/4} G R^{-1/4}) = (R_ε ⊗ L_ε)^{-1/4} vec(G), vec stacking columns.
        dense = torch.kron(right + eps * torch.eye(3, dtype=torch.float64), left + eps * torch.eye(4, dtype=torch.float64))
        expected = -lr * (_fractional_power(dense, -0.25) @ grad.T.reshape(-1)).reshape(3, 4).T
        torch.testing.assert_close(step, expected, rtol=1e-8, atol=1e-12)


def _block_norms(step, max_dim):
    return torch.stack([step[sl].norm() for sl in block_slices(step.shape, max_dim)])


@pytest.mark.parametrize(
    "grafting, betas, reference",
    [
        ("adam", (0.9, 0.999), lambda q: torch.optim.Adam([q], lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
        ("adagrad", (0.0, 1.0), lambda q: torch.optim.Adagrad([q], lr=0.01, eps=1e-8)),
        ("sgd", (0.0, 1.0), lambda q: torch.optim.SGD([q], lr=0.01)),
    ],
)
def test_grafted_block_step_norms_equal_the_grafting_methods(grafting, betas, reference):
    grads = _gradients((6, 5), 6, seed=3)
    p = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    shampoo = Shampoo([p], lr=0.01, betas=betas, epsilon=1e-6, grafting=grafting, grafting_epsilon=1e-8,
                      max_preconditioner_dim=4, precondition_frequency=2, start_preconditioning_step=2)
    ours, theirs = _run_on_gradients(shampoo, p, grads), _run_on_gradients(reference(q), q, grads)
    torch.testing.assert_close(ours[0], theirs[0])  # step 1 < start: the grafting method's step itself
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(_block_norms(a, 4), _block_norms(b, 4), rtol=1e-10, atol=0.0)
        assert not torch.allclose(a, b)  # but a different direction


def test_merge_small_dims_and_blocks_match_distributed_shampoo_examples():
    assert merge_small_dims((512, 512, 3, 3), 1024) == (512, 512, 9)
    assert merge_small_dims((512, 512, 3, 3), 8192) == (512, 4608)
    assert merge_small_dims((32, 3, 64, 64), 8192) == (96, 4096)
    assert merge_small_dims((1, 10, 1), 1024) == (10,)
    assert merge_small_dims((1,), 1024) == ()
    blocks = block_slices((5, 3), 2)
    assert [(s0.stop - s0.start, s1.stop - s1.start) for s0, s1 in blocks] == [(2, 2), (2, 1)] * 2 + [(1, 2), (1, 1)]
    assert merge_small_dims((4, 3), 1024) == (12,)  # small matrices become vectors, as in DistributedShampoo
    state = Shampoo([torch.zeros(3, 1, 2, 2, requires_grad=True)], max_preconditioner_dim=4)
    assert Shampoo.layout((3, 1, 2, 2), state.param_groups[0])[0] == (3, 4)


def test_inverse_root_retries_in_float64(monkeypatch):
    calls = []
    original = torch.linalg.eigh

    def flaky_eigh(matrix):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return original(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    matrix = torch.tensor([[4.0, 0.0], [0.0, 9.0]])
    root = inverse_root(matrix, 2, 1e-12)
    assert calls == [torch.float32, torch.float64] and root.dtype == torch.float32
    torch.testing.assert_close(root, torch.diag(torch.tensor([0.5, 1.0 / 3.0])))


def test_state_dict_resumes_exactly():
    kwargs = dict(lr=0.01, betas=(0.9, 0.999), grafting="adam", precondition_frequency=3, max_preconditioner_dim=16,
                  weight_decay=1e-3, momentum=0.5)
    assert_resumes_exactly(lambda model: Shampoo(model.parameters(), **kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "Invalid learning rate: -0.1. Must be >= 0.0."),
        (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0. Must be in [0.0, 1.0)."),
        (dict(betas=(0.9, 0.0)), "Invalid beta parameter at index 1: 0.0. Must be in (0.0, 1.0]."),
        (dict(epsilon=0.0), "Invalid epsilon value: 0.0. Must be > 0.0."),
        (dict(max_preconditioner_dim=0), "Invalid max_preconditioner_dim: 0. Must be an integer >= 1."),
        (dict(precondition_frequency=2.5), "Invalid precondition_frequency: 2.5. Must be an integer >= 1."),
        (dict(start_preconditioning_step=0), "Invalid start_preconditioning_step: 0. Must be -1 or an integer >= 1."),
        (dict(grafting="rmsprop"), "Invalid grafting: 'rmsprop'. Must be one of None, 'adam', 'adagrad', 'sgd'."),
        (dict(weight_decay=-1.0), "Invalid weight_decay: -1.0. Must be >= 0.0."),
    ],
)
def test_argument_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as error:
        Shampoo([torch.zeros(2, requires_grad=True)], **kwargs)
    assert str(error.value) == message


def test_trains_a_small_cnn():
    torch.manual_seed(5)
    model = SmallCNN()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    opt = Shampoo(model.parameters(), lr=0.03, betas=(0.9, 0.999), grafting="adam", precondition_frequency=5)
    losses = training_losses(model, opt, x, y, 20)
    assert losses[-1] < 0.7 * losses[0]


def test_trains_a_linear_cell_rnn_on_delayed_xor():
    torch.manual_seed(6)
    model = LinearCellRNN(vocab=2, embed=4, hidden=16, classes=2)
    tokens, targets = delayed_xor_batch(32, 8, delay=1)
    opt = Shampoo(model.parameters(), lr=0.02, betas=(0.9, 0.999), grafting="adam", precondition_frequency=5)
    losses = training_losses(model, opt, tokens, targets, 30)
    assert losses[-1] < 0.8 * losses[0]
