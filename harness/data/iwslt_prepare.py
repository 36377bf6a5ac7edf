"""IWSLT14 de-en preparation, as fairseq's examples/translation/prepare-iwslt14.sh does it, in Python.

Steps (each a small function): Moses tokenization (sacremoses, with Moses escaping) and lowercasing of raw text;
length cleaning of the training pairs (clean-corpus-n.perl: 1..175 tokens, length ratio <= 1.5); the validation
split as every 23rd line of the cleaned training text; a joint BPE of 10k merge operations learnt on train.de + train.en
by subword-nmt itself (learn_bpe -s 10000, as fairseq and the LLQR code run it), applied to every split.

`prepare(...)` is what scripts/prepare_iwslt14.py and the IWSLT dataset (for the mirror's files) call.
"""

import contextlib
import io
import json
from pathlib import Path

from harness.atomic import replace_from_temporary

LANGS = ("de", "en")
SPLITS = ("train", "valid", "test")
BPE_MARK = "@@"


class PreparationError(RuntimeError):
    """A problem with the inputs of the preparation, with a message saying what to do."""


def moses_tokenize_lower(lines, lang):
    """tokenizer.perl -l LANG (with Moses escaping) followed by lowercase.perl."""
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line.strip(), escape=True, return_str=True).lower() for line in lines]


def clean_pairs(src, tgt, min_len=1, max_len=175, ratio=1.5):
    """clean-corpus-n.perl: keep pairs whose token counts are within [min_len, max_len] and whose ratio <= `ratio`."""
    kept_src, kept_tgt = [], []
    for s, t in zip(src, tgt):
        ns, nt = len(s.split()), len(t.split())
        if ns < min_len or nt < min_len or ns > max_len or nt > max_len:
            continue
        if ns / nt > ratio or nt / ns > ratio:
            continue
        kept_src.append(" ".join(s.split()))
        kept_tgt.append(" ".join(t.split()))
    return kept_src, kept_tgt


def split_every(lines, every=23):
    """fairseq's split: line numbers (1-based) divisible by `every` go to valid, the others stay in train."""
    valid = [line for n, line in enumerate(lines, 1) if n % every == 0]
    train = [line for n, line in enumerate(lines, 1) if n % every != 0]
    return train, valid


def learn_joint_bpe(texts, merges=10000):
    """subword-nmt's learn_bpe -s `merges` on the concatenation of `texts` (lists of whitespace-tokenized lines), as
    fairseq's prepare-iwslt14.sh and the LLQR code's prepare_iwslt14_de_en_scratch.sh run it; returns the codes file's
    text ("#version: 0.2" then one merge per line)."""
    from subword_nmt.learn_bpe import learn_bpe

    codes = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
        learn_bpe((line for text in texts for line in text), codes, merges)
    return codes.getvalue()


def apply_bpe(codes, lines):
    """subword-nmt's apply_bpe -c codes: every non-final piece of a word marked with "@@"."""
    from subword_nmt.apply_bpe import BPE

    bpe = BPE(io.StringIO(codes))
    return [bpe.segment(line) for line in lines]


def remove_bpe(line):
    """fairseq's --remove-bpe: join the pieces marked with "@@ "."""
    return (line + " ").replace(BPE_MARK + " ", "").rstrip()


def read_lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def read_parallel(folder, split):
    """The aligned (de, en) lines of `split` in `folder`; clear errors for missing or misaligned files."""
    folder = Path(folder)
    missing = [str(folder / f"{split}.{lang}") for lang in LANGS if not (folder / f"{split}.{lang}").is_file()]
    if missing:
        raise PreparationError(f"IWSLT14: {', '.join(missing)} not found")
    de, en = (read_lines(folder / f"{split}.{lang}") for lang in LANGS)
    if len(de) != len(en):
        raise PreparationError(f"IWSLT14: {folder}/{split}.de has {len(de)} lines but {split}.en has {len(en)}; they must be line-aligned")
    return de, en


def tokenized_splits(tokenized=None, raw=None, train_from="train"):
    """{split: (de, en)} of Moses-tokenized, lowercased text.

    `tokenized`: a folder of pre-BPE files like fairseq's iwslt14.tokenized.de-en/tmp (or the mirror), used as is;
    `raw`: a folder of plain parallel text {train,test}.{de,en} (one sentence per line), tokenized, lowercased and
    cleaned here, valid carved from train. `train_from="valid"` trains on the valid split instead (the mirror has no
    train split): every 23rd line of it becomes the new valid split."""
    if (tokenized is None) == (raw is None):
        raise PreparationError("IWSLT14: give exactly one input folder: --tokenized (pre-BPE, like the mirror) or --raw (plain text)")
    source = Path(tokenized or raw)
    if not source.is_dir():
        raise PreparationError(f"IWSLT14: input folder {source} does not exist")
    if train_from not in ("train", "valid"):
        raise PreparationError(f"IWSLT14: train_from={train_from!r} is invalid; choose 'train' or 'valid'")
    if tokenized is not None:
        needed = ["valid", "test"] if train_from == "valid" else list(SPLITS)
        splits = {split: read_parallel(source, split) for split in needed}
        if train_from == "valid":
            (train_de, valid_de), (train_en, valid_en) = split_every(splits["valid"][0]), split_every(splits["valid"][1])
            splits["train"], splits["valid"] = (train_de, train_en), (valid_de, valid_en)
        return splits
    first = "valid" if train_from == "valid" else "train"
    de, en = read_parallel(source, first)
    de, en = clean_pairs(moses_tokenize_lower(de, "de"), moses_tokenize_lower(en, "en"))
    (train_de, valid_de), (train_en, valid_en) = split_every(de), split_every(en)
    test_de, test_en = read_parallel(source, "test")
    return {"train": (train_de, train_en), "valid": (valid_de, valid_en),
            "test": (moses_tokenize_lower(test_de, "de"), moses_tokenize_lower(test_en, "en"))}


def prepare(out, tokenized=None, raw=None, train_from="train", bpe_merges=10000):
    """Write {train,valid,test}.{de,en} with joint BPE into `out` (plus the BPE `code` file and prepared.json); returns `out`."""
    splits = tokenized_splits(tokenized, raw, train_from)
    if not splits["train"][0]:
        raise PreparationError("IWSLT14: the training split is empty after cleaning")
    codes = learn_joint_bpe([splits["train"][0], splits["train"][1]], bpe_merges)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    replace_from_temporary(lambda temporary: temporary.write_text(codes, encoding="utf-8"), out / "code")
    for split, (de, en) in splits.items():
        for lang, lines in (("de", de), ("en", en)):
            text = "\n".join(apply_bpe(codes, lines)) + "\n"
            replace_from_temporary(lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"), out / f"{split}.{lang}")
    info = {"train_from": train_from, "bpe": "subword-nmt", "bpe_merges": bpe_merges, "lines": {s: len(p[0]) for s, p in splits.items()}}
    (out / "prepared.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
