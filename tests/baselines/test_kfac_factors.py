"""K-FAC's factors against brute-force per-example computations (baselines_notes.md §1.4, test 1).

With factor_decay=0 the stored factors are the first step's estimates Â, Ĝ exactly. Each reference below
takes one example at a time (batch of one), gets ∂ℓ_n/∂s by autograd on an explicitly written forward pass,
and builds the outer products by hand (no unfold, no hooks).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines import KFAC
from tests.baselines.helpers import LinearCellRNN, protocol_closure



@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _one_step(model, inputs, targets):
    opt = KFAC(model.parameters(), model=model, lr=0.0, factor_decay=0.0, kl_clip=None, verbose=False)
    opt.step(protocol_closure(model, inputs, targets))
    return opt


def _with_one(x):
    return torch.cat([x, torch.ones(1)])


def test_linear_factors_equal_per_example_outer_products():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    opt = _one_step(model, x, y)
    l1, l2 = model[0], model[2]
    a1 = a2 = g1 = g2 = 0
    for n in range(6):
        s1 = l1.weight @ x[n] + l1.bias
        h = torch.tanh(s1)
        s2 = l2.weight @ h + l2.bias
        gs1, gs2 = torch.autograd.grad(F.cross_entropy(s2[None], y[n : n + 1]), [s1, s2])
        a1, a2 = a1 + torch.outer(_with_one(x[n]), _with_one(x[n])), a2 + torch.outer(_with_one(h), _with_one(h))
        g1, g2 = g1 + torch.outer(gs1, gs1), g2 + torch.outer(gs2, gs2)
    for layer, a, g in ((l1, a1, g1), (l2, a2, g2)):
        state = opt.state[layer.weight]
        torch.testing.assert_close(state["A"], a.detach() / 6)
        torch.testing.assert_close(state["G"], g / 6)


def test_conv2d_factors_equal_kfc_per_location_sums():
    torch.manual_seed(1)
    conv, head = nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Linear(3 * 3 * 3, 4)
    model = nn.Sequential(conv, nn.Flatten(), head)
    x, y = torch.randn(5, 2, 5, 5), torch.randint(0, 4, (5,))
    opt = _one_step(model, x, y)
    a_ref = g_ref = 0
    for n in range(5):
        padded = F.pad(x[n], (1, 1, 1, 1))
        patches = [padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1) for i in range(3) for j in range(3)]
        s = torch.stack([conv.weight.reshape(3, -1) @ p + conv.bias for p in patches], dim=1)  # (3, T)
        (gs,) = torch.autograd.grad(F.cross_entropy(head(s.reshape(1, -1)), y[n : n + 1]), [s])
        for t, p in enumerate(patches):
            a_ref = a_ref + torch.outer(_with_one(p), _with_one(p))
            g_ref = g_ref + torch.outer(gs[:, t], gs[:, t])
    # KFC: A averaged over N·T locations, G summed over locations and averaged over N (notes §1.4).
    torch.testing.assert_close(opt.state[conv.weight]["A"], a_ref / (5 * 9))
    torch.testing.assert_close(opt.state[conv.weight]["G"], g_ref / 5)


def test_recurrent_linear_factors_sum_over_time_steps():
    torch.manual_seed(2)
    model = LinearCellRNN(vocab=4, embed=3, hidden=5, classes=2)
    n_seq, steps = 3, 4
    tokens, y = torch.randint(0, 4, (n_seq, steps)), torch.randint(0, 2, (n_seq, steps))
    opt = _one_step(model, tokens, y)
    cell = model.cell
    a_ref = g_ref = 0
    for n in range(n_seq):
        h, inputs, outputs = torch.zeros(5), [], []
        for t in range(steps):
            a = torch.cat([model.embed.weight[tokens[n, t]], h])
            s = cell.weight @ a + cell.bias
            h = torch.tanh(s)
            inputs.append(a)
            outputs.append(s)
        logits = torch.stack([model.head(torch.tanh(s)) for s in outputs])
        # The sequence's summed token loss: the batch loss is a mean over all N·T tokens (M = N·T).
        grads = torch.autograd.grad(F.cross_entropy(logits, y[n], reduction="sum"), outputs)
        for a, g in zip(inputs, grads):
            a_ref = a_ref + torch.outer(_with_one(a), _with_one(a)).detach()
            g_ref = g_ref + torch.outer(g, g)
    m = n_seq * steps
    torch.testing.assert_close(opt.state[cell.weight]["A"], a_ref / m)
    torch.testing.assert_close(opt.state[cell.weight]["G"], g_ref / m)


def test_embedding_factors_are_a_diagonal_count_and_a_gradient_covariance():
    torch.manual_seed(3)
    embed, head = nn.Embedding(6, 3), nn.Linear(2 * 3, 2)
    model = nn.Sequential(embed, nn.Flatten(), head)
    idx, y = torch.randint(0, 6, (5, 2)), torch.randint(0, 2, (5,))
    opt = _one_step(model, idx, y)
    a_dense = g_ref = 0
    for n in range(5):
        rows = [embed.weight[i] for i in idx[n]]
        for i in idx[n]:
            onehot = F.one_hot(i, 6).double()
            a_dense = a_dense + torch.outer(onehot, onehot)
        for t, i in enumerate(idx[n]):  # ∂ℓ_n/∂(output row t) from the per-example forward
            rows_t = [r.detach().requires_grad_() for r in rows]
            (gt,) = torch.autograd.grad(F.cross_entropy(head(torch.cat(rows_t))[None], y[n : n + 1]), [rows_t[t]])
            g_ref = g_ref + torch.outer(gt, gt)
    state = opt.state[embed.weight]
    torch.testing.assert_close(torch.diag(state["A"]), a_dense / 10)  # stored as its diagonal
    torch.testing.assert_close(state["G"], g_ref / 5)


def _mean_softmax_fisher(logits):
    """E_y[(p − e_y)(p − e_y)ᵀ] = diag(p) − p pᵀ, averaged over the rows (Martens & Grosse 2015 §5)."""
    p = torch.softmax(logits, dim=1).detach()
    return torch.stack([torch.diag(q) - torch.outer(q, q) for q in p]).mean(0)


def test_mc_fisher_output_factor_matches_the_exact_softmax_fisher_in_expectation():
    torch.manual_seed(4)
    layer = nn.Linear(3, 4)
    x = torch.randn(5, 3).repeat(4000, 1)  # 5 inputs, 4000 label samples each
    y = torch.zeros(x.shape[0], dtype=torch.long)  # unused by the MC Fisher
    opt = KFAC(layer.parameters(), model=layer, lr=0.0, factor_decay=0.0, kl_clip=None, fisher="mc", verbose=False)
    opt.step(protocol_closure(layer, x, y))
    torch.testing.assert_close(opt.state[layer.weight]["G"], _mean_softmax_fisher(layer(x[:5])), rtol=0.0, atol=0.01)
    rows = torch.cat([x[:5], torch.ones(5, 1)], dim=1)
    torch.testing.assert_close(opt.state[layer.weight]["A"], rows.T @ rows / 5)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 3, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 2)),
    nn.Conv2d(2, 3, 3, dilation=2, padding="same"),
    nn.Conv2d(2, 3, 1, stride=2, bias=False),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_input_columns_are_the_unfolded_patches(conv, channels_last):
    """The strided-view patches equal F.unfold's, laid out (channel·kernel, example·location)."""
    from baselines.kfac_layers import _conv_padding, input_columns

    x = torch.randn(4, 2, 7, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    unfolded = F.unfold(x, conv.kernel_size, conv.dilation, _conv_padding(conv), conv.stride)
    expected = unfolded.permute(1, 0, 2).reshape(unfolded.shape[1], -1)
    assert torch.equal(input_columns(conv, x), expected)


def test_mc_fisher_leaves_padded_positions_out_of_the_output_factor():
    """Padded targets (-100) are out of the training loss, so the sampled Fisher must not count them either:
    Ĝ is the exact softmax Fisher averaged over the unpadded rows only, whatever the padded rows' logits."""
    torch.manual_seed(5)
    layer = nn.Linear(3, 4)
    real, padded = torch.randn(5, 3), 10 * torch.randn(3, 3)
    x = torch.cat([real, padded]).repeat(4000, 1)
    y = torch.cat([torch.zeros(5, dtype=torch.long), torch.full((3,), -100)]).repeat(4000)
    opt = KFAC(layer.parameters(), model=layer, lr=0.0, factor_decay=0.0, kl_clip=None, fisher="mc", verbose=False)
    opt.step(protocol_closure(layer, x, y))
    torch.testing.assert_close(opt.state[layer.weight]["G"], _mean_softmax_fisher(layer(real)), rtol=0.0, atol=0.01)
    rows = torch.cat([x[:8], torch.ones(8, 1)], dim=1)  # Â: every row, padded ones too (kfac-pytorch's choice)
    torch.testing.assert_close(opt.state[layer.weight]["A"], rows.T @ rows / 8)
