"""What every dataset gives the training loop.

A dataset is deterministic in (seed, step): `train_batch(step)` always returns the same batch for the
same step, so a resumed run continues exactly where it stopped, and the "data position" stored in a
checkpoint is just the step.
"""

import abc
import math

import torch

# The loss kinds a dataset may declare; second-order optimizers receive this string (harness.protocol).
LOSS_KINDS = ("cross_entropy", "mse", "binary_cross_entropy", "objective")


class Dataset(abc.ABC):
    """Base class. Subclasses set `loss`, `metrics`, `info`, `batch_size` and implement the batch methods."""

    loss = "cross_entropy"  # one of LOSS_KINDS
    metrics = ("accuracy",)  # besides the loss: any of "accuracy", "perplexity", "sign_accuracy"
    info = {}  # what model builders need: num_classes, in_channels, image_size, input_dim, vocab_size, ...
    steps_per_epoch = None  # None for an endless stream of fresh samples

    @abc.abstractmethod
    def train_batch(self, step):
        """The training batch (inputs, targets) of global step `step`, on the CPU."""

    @abc.abstractmethod
    def sample_batch(self, batch_size, generator):
        """A batch of `batch_size` training samples drawn with `generator` (for an optimizer's own refits)."""

    def eval_batches(self):
        """Batches of the held-out split (an empty iterator when there is none)."""
        return iter(())


class ArrayDataset(Dataset):
    """A dataset held in memory as tensors, shuffled each epoch with a generator seeded by (seed, epoch).

    `augment(inputs, generator)` (optional) transforms a training batch with randomness from `generator`,
    which is seeded by (seed, step), so augmentation is reproducible too.
    """

    def __init__(self, train, test, batch_size, seed, eval_batch_size=None, augment=None, drop_last=True):
        self.train_x, self.train_y = train
        self.test_x, self.test_y = test if test is not None else (None, None)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or max(batch_size, 256))
        self.seed = int(seed)
        self.augment = augment
        n = len(self.train_x)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.steps_per_epoch = n // self.batch_size if drop_last else math.ceil(n / self.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the training set ({n} samples)")
        self._epoch, self._order = None, None

    def _epoch_order(self, epoch):
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.train_x), generator=generator)
        return self._order

    def train_batch(self, step):
        epoch, position = divmod(step, self.steps_per_epoch)
        index = self._epoch_order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        return self._transformed(index, torch.Generator().manual_seed(self.seed * 7_919 + step + 1))

    def sample_batch(self, batch_size, generator):
        index = torch.randint(len(self.train_x), (batch_size,), generator=generator)
        return self._transformed(index, generator)

    def _transformed(self, index, generator):
        inputs, targets = self.train_x[index], self.train_y[index]
        if self.augment is not None:
            inputs = self.augment(inputs, generator)
        return inputs, targets

    def eval_batches(self):
        if self.test_x is None:
            return
        for start in range(0, len(self.test_x), self.eval_batch_size):
            yield self.test_x[start : start + self.eval_batch_size], self.test_y[start : start + self.eval_batch_size]


def to_device(batch, device):
    """Move a tensor, or a tuple/list/dict of tensors (seq2seq inputs), to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return type(batch)(to_device(value, device) for value in batch)


def split_indices(n, train_fraction, seed):
    """A seeded random split of range(n) into train and held-out index tensors."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_fraction * n))
    return order[:n_train], order[n_train:]
