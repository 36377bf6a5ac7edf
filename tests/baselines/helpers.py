"""Small models and a closure that follows the training-loop protocol (harness/protocol.py), for the tests."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def protocol_closure(model, inputs, targets, loss="cross_entropy"):
    """closure() zeroes grads, runs forward and backward, returns the loss; closure(backward=False) returns the
    loss with its graph; .inputs/.targets/.model are exposed (the protocol in CONVENTIONS/harness)."""

    def loss_fn(out):
        if loss == "cross_entropy":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))
        return 0.5 * (out - targets).pow(2).reshape(out.shape[0], -1).sum(1).mean()

    def closure(backward=True):
        if backward:
            model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            value = loss_fn(model(inputs))
        if backward:
            value.backward()
        return value

    closure.inputs, closure.targets, closure.model = inputs, targets, model
    return closure


def training_losses(model, optimizer, inputs, targets, steps):
    """The loss returned by each of `steps` optimizer steps on one fixed batch."""
    closure = protocol_closure(model, inputs, targets)
    return [optimizer.step(closure).item() for _ in range(steps)]


def assert_resumes_exactly(make_optimizer, seed=4):
    """A SmallCNN trained 4 steps, saved (model and optimizer state_dict), trained 5 more; a fresh model and
    optimizer loaded from the save and trained on the same 5 batches must end at bit-identical parameters."""
    torch.manual_seed(seed)
    model = SmallCNN()
    batches = [(torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))) for _ in range(9)]

    def train(model, optimizer, batches):
        for x, y in batches:
            optimizer.step(protocol_closure(model, x, y))

    optimizer = make_optimizer(model)
    train(model, optimizer, batches[:4])
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, batches[4:])
    resumed = SmallCNN()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = make_optimizer(resumed)
    resumed_optimizer.load_state_dict(saved_optimizer)
    train(resumed, resumed_optimizer, batches[4:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


class SmallCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.bn(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class LinearCellRNN(nn.Module):
    """An Elman RNN whose cell is one nn.Linear applied at every time step, reading embedded tokens."""

    def __init__(self, vocab=4, embed=5, hidden=8, classes=2):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, embed)
        self.cell = nn.Linear(embed + hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        h = torch.zeros(tokens.shape[0], self.hidden, dtype=self.cell.weight.dtype)
        outs = []
        for x in self.embed(tokens).unbind(1):
            h = torch.tanh(self.cell(torch.cat([x, h], dim=1)))
            outs.append(h)
        return self.head(torch.stack(outs, dim=1))


def delayed_xor_batch(batch, length, delay=2, seed=0):
    """Bits in, XOR of the bit now and the bit `delay` steps ago out (0 for the first steps)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (batch, length), generator=g)
    targets = torch.zeros_like(bits)
    targets[:, delay:] = bits[:, delay:] ^ bits[:, :-delay]
    return bits, targets
