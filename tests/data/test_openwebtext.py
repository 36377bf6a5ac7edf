"""scripts/prepare_openwebtext.py on a small corpus (with a byte-level tiktoken encoding built here, since the GPT-2
one needs a download), its error messages, and the `openwebtext` dataset reading its memmaps."""

import numpy as np
import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.errors import DataNotFoundError
from scripts import prepare_openwebtext as owt

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, {i} times.\n" * 3 for i in range(10)]


def byte_encoding():
    """A tiktoken Encoding with one token per byte and <|endoftext|> = 256 (GPT-2's layout, minus the merges)."""
    import tiktoken

    return tiktoken.Encoding("bytes", pat_str=GPT2_PATTERN, mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})


def write_corpus(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(DOCUMENTS):
        (folder / f"doc_{i:02d}.txt").write_text(text, encoding="utf-8")
    return owt.read_text_dir(folder)


def test_memmaps_hold_every_document_followed_by_end_of_text(tmp_path):
    documents = write_corpus(tmp_path / "corpus")
    meta = owt.prepare(documents, tmp_path / "out", byte_encoding(), val_fraction=0.2, seed=1)
    train = np.memmap(tmp_path / "out" / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(tmp_path / "out" / "val.bin", dtype=np.uint16, mode="r")
    assert meta["documents"] == {"train": 8, "val": 2} and meta["tokens"] == {"train": len(train), "val": len(val)}
    texts = []
    for tokens in (train, val):
        ends = np.flatnonzero(tokens == 256)
        starts = np.concatenate([[0], ends[:-1] + 1])
        texts += [bytes(tokens[s:e].astype(np.uint8)).decode() for s, e in zip(starts, ends)]
    assert sorted(texts) == sorted(DOCUMENTS), "the split is a partition of the documents, each exactly once"


def test_dataset_reads_the_prepared_memmaps(tmp_path):
    owt.prepare(write_corpus(tmp_path / "corpus"), tmp_path / "out", byte_encoding(), val_fraction=0.2)
    paths = DataPaths(tmp_path / "cache", None, False)
    data = build_dataset({"name": "openwebtext", "data_dir": str(tmp_path / "out"), "block_size": 16, "batch_size": 4,
                          "vocab_size": 257, "eval_iters": 2}, paths, seed=0)
    x, y = data.train_batch(3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]), "targets are the inputs shifted by one"
    assert torch.equal(data.train_batch(3)[0], x) and not torch.equal(data.train_batch(4)[0], x)
    assert len(list(data.eval_batches())) == 2


def test_missing_memmaps_say_how_to_make_them(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"train\.bin and val\.bin were not found .*scripts\.prepare_openwebtext"):
        build_dataset({"name": "openwebtext"}, DataPaths(tmp_path / "cache", None, False), seed=0)


def test_script_errors(tmp_path, capsys, monkeypatch):
    assert owt.main(["--text-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert owt.main(["--text-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no .txt files" in capsys.readouterr().err
    write_corpus(tmp_path / "one")
    for extra in (tmp_path / "one").glob("doc_0[1-9].txt"):
        extra.unlink()
    monkeypatch.setattr(owt, "load_encoding", lambda name: byte_encoding())
    assert owt.main(["--text-dir", str(tmp_path / "one"), "--out", str(tmp_path / "o"), "--val-fraction", "0.5"]) == 2
    assert "too few for a train/validation split" in capsys.readouterr().err


def test_offline_gpt2_encoding_error_is_explained(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(owt.PrepareError, match=r"could not load tiktoken's 'gpt2' encoding .*TIKTOKEN_CACHE_DIR"):
        owt.load_encoding("gpt2")


def test_the_script_runs_end_to_end(tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path / "corpus")
    monkeypatch.setattr(owt, "load_encoding", lambda name: byte_encoding())
    assert owt.main(["--text-dir", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--val-fraction", "0.1"]) == 0
    assert "training and" in capsys.readouterr().out
    assert (tmp_path / "out" / "meta.json").is_file()
