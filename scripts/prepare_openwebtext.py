"""Tokenize OpenWebText (or any text corpus) with tiktoken's GPT-2 encoding into nanoGPT's memmap files.

Writes `train.bin` and `val.bin` (uint16 token ids; each document followed by <|endoftext|>, id 50256) and
`meta.json` into --out, as nanoGPT's data/openwebtext/prepare.py does (validation = 0.05 % of the documents,
split with seed 2357). The `openwebtext` dataset reads these files.

    python -m scripts.prepare_openwebtext --out ~/.cache/second-order-repro/openwebtext            # HF download
    python -m scripts.prepare_openwebtext --text-dir my_corpus/ --out data/owt --val-fraction 0.1   # local .txt files

The Hugging Face download needs network and the `datasets` package; the GPT-2 encoding is downloaded by tiktoken
the first time (or read from TIKTOKEN_CACHE_DIR).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class PrepareError(RuntimeError):
    """A problem the user can fix; main() prints it and exits with status 2."""


def load_encoding(name="gpt2"):
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except Exception as error:  # tiktoken raises requests/OSError/ValueError variants when offline or unknown
        raise PrepareError(
            f"could not load tiktoken's {name!r} encoding ({type(error).__name__}: {error}). It is downloaded on first "
            "use: run once on a machine with network, or copy its cache and set TIKTOKEN_CACHE_DIR."
        ) from error


def read_text_dir(folder):
    """One document per .txt file of `folder` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepareError(f"--text-dir {folder} is not a directory")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise PrepareError(f"--text-dir {folder} holds no .txt files")
    return [f.read_text(encoding="utf-8") for f in files]


def read_huggingface(name="openwebtext"):
    try:
        import datasets
    except ImportError as error:
        raise PrepareError("downloading OpenWebText needs the `datasets` package (pip install datasets), or use --text-dir") from error
    return [row["text"] for row in datasets.load_dataset(name, split="train", trust_remote_code=True)]


def split_documents(documents, val_fraction, seed=2357):
    """A seeded random split of the documents (nanoGPT: train_test_split(test_size=0.0005, seed=2357))."""
    if not 0.0 < val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(documents))
    n_val = max(1, int(round(val_fraction * len(documents))))
    if n_val >= len(documents):
        raise PrepareError(f"{len(documents)} document(s) are too few for a train/validation split")
    return [documents[i] for i in order[n_val:]], [documents[i] for i in order[:n_val]]


def write_tokens(documents, encoding, path):
    """encode_ordinary(document) + [eot] for each document, concatenated into a uint16 memmap; returns the count."""
    if encoding.n_vocab > 2**16:
        raise PrepareError(f"the encoding has {encoding.n_vocab} tokens; uint16 files hold at most 65,536")
    pieces = [np.asarray(encoding.encode_ordinary(doc) + [encoding.eot_token], dtype=np.uint16) for doc in documents]
    total = int(sum(len(p) for p in pieces))
    out = np.memmap(path, dtype=np.uint16, mode="w+", shape=(total,))
    position = 0
    for piece in pieces:
        out[position : position + len(piece)] = piece
        position += len(piece)
    out.flush()
    return total


def prepare(documents, out, encoding, val_fraction=0.0005, seed=2357):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = split_documents(documents, val_fraction, seed)
    counts = {split: write_tokens(docs, encoding, out / f"{split}.bin") for split, docs in (("train", train), ("val", val))}
    meta = {"encoding": encoding.name, "vocab_size": encoding.n_vocab, "tokens": counts, "documents": {"train": len(train), "val": len(val)}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder for train.bin, val.bin, meta.json")
    parser.add_argument("--text-dir", help="tokenize the .txt files of this folder instead of downloading OpenWebText")
    parser.add_argument("--val-fraction", type=float, default=0.0005)
    parser.add_argument("--seed", type=int, default=2357)
    parser.add_argument("--encoding", default="gpt2")
    args = parser.parse_args(argv)
    try:
        documents = read_text_dir(args.text_dir) if args.text_dir else read_huggingface()
        meta = prepare(documents, args.out, load_encoding(args.encoding), args.val_fraction, args.seed)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {meta['tokens']['train']:,} training and {meta['tokens']['val']:,} validation tokens to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
