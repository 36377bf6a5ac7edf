"""Shakespeare-char and Penn Treebank from the offline mirror, checked against the published numbers."""

import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.data.text import IGNORE, batchify
from harness.errors import DataNotFoundError
from tests.conftest import SHARED_DATA

needs_mirror = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the offline mirror (../shared/data) is not here")


def paths(tmp_path, mirror=SHARED_DATA):
    return DataPaths(tmp_path / "cache", mirror, False)


@needs_mirror
def test_shakespeare_char_matches_nanogpt_prepare(tmp_path):
    data = build_dataset({"name": "shakespeare_char", "block_size": 8, "batch_size": 4, "eval_iters": 3}, paths(tmp_path), seed=0)
    assert data.info == {"vocab_size": 65, "seq_len": 8}
    assert (len(data.train), len(data.val)) == (1_003_854, 111_540)  # nanoGPT: "train has 1,003,854 tokens, val 111,540"
    assert "".join(data.itos[i] for i in data.train[:14].tolist()) == "First Citizen:"
    x, y = data.train_batch(7)
    assert x.shape == y.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(build_dataset({"name": "shakespeare_char", "block_size": 8, "batch_size": 4}, paths(tmp_path), seed=0).train_batch(7)[0], x)
    assert len(list(data.eval_batches())) == 3


@needs_mirror
def test_ptb_vocabulary_sizes_and_windows(tmp_path):
    data = build_dataset({"name": "ptb", "batch_size": 20, "bptt": 35}, paths(tmp_path), seed=0)
    assert data.info["vocab_size"] == 10_000  # Mikolov's 9,999 words + <eos>
    assert data.train.numel() == 929_589 // 20 * 20  # 929,589 training tokens including <eos>
    x, y = data.train_batch(0)
    assert x.shape == y.shape == (20, 35)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(data.train_batch(1)[0][:, 0], y[:, -1]), "the next window continues each stream"
    assert data.train_batch(data.steps_per_epoch)[0].equal(x), "an epoch is one pass over the streams"
    assert [data.vocabulary[i] for i in x[0, :3].tolist()] == ["aer", "banknote", "berlitz"]


def test_batchify_lays_out_contiguous_streams():
    grid = batchify(torch.arange(23), 4)
    assert grid.shape == (5, 4) and grid[:, 1].tolist() == [5, 6, 7, 8, 9]


@needs_mirror
def test_ptb_context_warms_up_with_ignored_targets(tmp_path):
    data = build_dataset({"name": "ptb", "batch_size": 10, "bptt": 5, "context": 3}, paths(tmp_path), seed=0)
    x, y = data.train_batch(2)
    assert x.shape == (10, 8) and (y[:, :3] == IGNORE).all() and (y[:, 3:] != IGNORE).all()
    assert torch.equal(x[:, 3:], data.train_batch(2)[0][:, 3:])
    first, _ = data.train_batch(0)
    assert first.shape == (10, 5), "the first window has no earlier tokens"


def test_missing_text_data_names_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"Tiny Shakespeare: input\.txt .* looked at .*downloads are off"):
        build_dataset({"name": "shakespeare_char"}, paths(tmp_path, mirror=tmp_path / "no_mirror"), seed=0)
