"""The delayed-XOR task and RNN of the PSGD reference demo (psgd_notes.md §7), for tests and scripts.

Data come from a numpy RandomState of their own, so that they consume no torch random numbers; the model's
parameters are drawn from torch's global generator (W1x, then W2) and numpy (the orthogonal W1h), as the demo.
"""

import numpy as np
import torch


def xor_batch(rng, batch_size=128, seq_len=16):
    """(x of shape (L, batch, 2), y of shape (batch, 1) in {−1, +1}); draw order per sample as the demo."""
    x = np.zeros([batch_size, seq_len, 2], dtype=np.float32)
    y = np.zeros([batch_size, 1], dtype=np.float32)
    for i in range(batch_size):
        x[i, :, 0] = rng.choice([-1.0, 1.0], seq_len)
        i1 = int(np.floor(rng.rand() * 0.1 * seq_len))
        i2 = int(np.floor(rng.rand() * 0.4 * seq_len + 0.1 * seq_len))
        x[i, i1, 1] = 1.0
        x[i, i2, 1] = 1.0
        y[i] = -1.0 if x[i, i1, 0] == x[i, i2, 0] else 1.0
    return torch.tensor(np.transpose(x, [1, 0, 2])), torch.tensor(y)


class XorRNN(torch.nn.Module):
    """h_t = tanh(x_t W1x + h_{t−1} W1h + b1), ŷ = h_L W2 + b2; 2-30-1, 1,021 parameters in the order W1x, W1h, b1, W2, b2."""

    def __init__(self, np_rng, hidden=30):
        super().__init__()
        self.hidden = hidden
        self.W1x = torch.nn.Parameter(0.1 * torch.randn(2, hidden))
        q, _ = np.linalg.qr(np_rng.normal(size=[hidden, hidden]))
        self.W1h = torch.nn.Parameter(torch.tensor(q, dtype=torch.float32))
        self.b1 = torch.nn.Parameter(torch.zeros(hidden))
        self.W2 = torch.nn.Parameter(0.1 * torch.randn(hidden, 1))
        self.b2 = torch.nn.Parameter(torch.zeros([]))

    def forward(self, xs):
        h = torch.zeros(xs.shape[1], self.hidden, dtype=xs.dtype, device=xs.device)
        for x in torch.unbind(xs):
            h = torch.tanh(x @ self.W1x + h @ self.W1h + self.b1)
        return h @ self.W2 + self.b2


def logistic_loss(model, x, y):
    """−mean(log σ(y·ŷ)) (the demo's loss)."""
    return -torch.mean(torch.log(torch.sigmoid(y * model(x))))


def build(seed, seq_len=16):
    """Seed torch, build the model, return (model, data RandomState). Build the optimizer right after this."""
    torch.manual_seed(seed)
    model = XorRNN(np.random.RandomState(seed + 1000))
    return model, np.random.RandomState(seed)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
