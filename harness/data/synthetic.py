"""Data-free tasks: delayed XOR, modular arithmetic (grokking) and the Rosenbrock function."""

import numpy as np
import torch

from harness.data.base import ArrayDataset, Dataset, split_indices
from harness.registry import register_dataset


class DelayedXOR(Dataset):
    """The delayed-XOR task of the PSGD reference code (psgd_notes.md §7).

    Each sequence has a random ±1 stream in channel 0 and two markers in channel 1, the first in
    [0, 0.1L), the second in [0.1L, 0.5L); the target is the XOR of the two marked bits. Inputs are
    (batch, L, 2), targets are 0/1 here (the reference's ±1 label y maps to (y + 1) / 2, and its logistic
    loss −log σ(y·ŷ) is binary cross-entropy on the logit ŷ). A fresh batch every step, seeded by (seed, step).
    """

    loss = "binary_cross_entropy"
    metrics = ("sign_accuracy",)

    def __init__(self, seq_len=16, batch_size=128, seed=0, eval_size=4096):
        if seq_len < 2:
            raise ValueError(f"dataset.seq_len must be >= 2, got {seq_len}")
        self.seq_len, self.batch_size, self.seed, self.eval_size = int(seq_len), int(batch_size), int(seed), eval_size
        self.info = {"input_dim": 2, "output_dim": 1, "seq_len": self.seq_len}

    def _generate(self, n, rng):
        length = self.seq_len
        x = np.zeros((n, length, 2), dtype=np.float32)
        x[:, :, 0] = rng.choice([-1.0, 1.0], size=(n, length))
        i1 = np.floor(rng.random(n) * 0.1 * length).astype(int)
        i2 = np.floor(rng.random(n) * 0.4 * length + 0.1 * length).astype(int)
        rows = np.arange(n)
        x[rows, i1, 1] = 1.0
        x[rows, i2, 1] = 1.0
        y = (x[rows, i1, 0] != x[rows, i2, 0]).astype(np.float32)  # reference label +1 <=> bits differ
        return torch.from_numpy(x), torch.from_numpy(y)

    def train_batch(self, step):
        return self._generate(self.batch_size, np.random.default_rng([self.seed, 0, step]))

    def sample_batch(self, batch_size, generator):
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return self._generate(batch_size, np.random.default_rng(seed))

    def eval_batches(self):
        inputs, targets = self._generate(self.eval_size, np.random.default_rng([self.seed, 1]))
        for start in range(0, self.eval_size, 1024):
            yield inputs[start : start + 1024], targets[start : start + 1024]


@register_dataset("delayed_xor")
def delayed_xor(paths, batch_size=128, seed=0, seq_len=16, eval_size=4096):
    return DelayedXOR(seq_len=seq_len, batch_size=batch_size, seed=seed, eval_size=eval_size)


OPERATIONS = {
    "+": lambda a, b, p: (a + b) % p,
    "-": lambda a, b, p: (a - b) % p,
    "*": lambda a, b, p: (a * b) % p,
    "/": lambda a, b, p: (a * pow(int(b), p - 2, p)) % p,  # b⁻¹ by Fermat (p prime); b = 0 is left out
}


@register_dataset("modular_arithmetic")
def modular_arithmetic(paths, batch_size=512, seed=0, p=97, operation="+", train_fraction=0.6):
    """All equations "a ∘ b = c (mod p)" as token sequences [a, op, b, =], split into train and validation.

    Tokens 0..p−1 are the numbers, p is the operation and p+1 is "=". The target is c (p classes), as in
    Power et al. (2022) and the LLQR grokking preset (p = 97, 60 % train).
    """
    if operation not in OPERATIONS:
        raise ValueError(f"dataset.operation={operation!r} is not known; choose one of {sorted(OPERATIONS)}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"dataset.train_fraction must be in (0, 1), got {train_fraction}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if operation == "/":
        a, b = a[b != 0], b[b != 0]
    c = torch.tensor([OPERATIONS[operation](int(x), int(y), p) for x, y in zip(a, b)])
    tokens = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], dim=1)
    train, test = split_indices(len(c), train_fraction, seed)
    data = ArrayDataset((tokens[train], c[train]), (tokens[test], c[test]), min(batch_size, len(train)), seed)
    data.info = {"vocab_size": p + 2, "seq_len": 4, "num_classes": p}
    return data


class Rosenbrock(Dataset):
    """No data: the model is the Rosenbrock function of its two parameters and the loss is its value."""

    loss = "objective"
    metrics = ()
    info = {}
    batch_size = 1

    def train_batch(self, step):
        return torch.zeros(1, 0), torch.zeros(1, 0)

    def sample_batch(self, batch_size, generator):
        return self.train_batch(0)


@register_dataset("rosenbrock")
def rosenbrock(paths, batch_size=1, seed=0):
    return Rosenbrock()
