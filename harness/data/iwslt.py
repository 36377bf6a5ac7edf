"""IWSLT14 German→English translation with fairseq's conventions, and BLEU through `final_metrics`.

Reads a folder of BPE text {train,valid,test}.{de,en} written by scripts/prepare_iwslt14.py (`data_dir`, or
`<root>/iwslt14_de_en_bpe`). Without one, `train_from: valid` prepares the mirror's valid and test files into
the cache (a mini task: train on valid minus every 23rd line, validate on those, test on test).

fairseq conventions: one dictionary per language (<s>=0, <pad>=1, </s>=2, <unk>=3, then symbols by frequency,
padded to a multiple of 8), sentences end with </s>, the decoder input is the target shifted right starting with
</s>; batches hold at most `max_tokens` padded tokens, are built once from the length-sorted data and shuffled
each epoch (`batching: fairseq`), or, as the LLQR code does, rebuilt each epoch from percentile length buckets
(`batching: percentile_buckets`). Inputs are (src_tokens, prev_output_tokens); targets are the target ids with -100 at padding.

Loss: "cross_entropy" over the non-padding target positions, label-smoothed by the `label_smoothing` attribute
(config key dataset.label_smoothing, the paper's 0.1) in training through `harness.protocol.loss_function`, which uses
F.cross_entropy(..., label_smoothing=ε): torch spreads ε over all V classes, fairseq over the V − 1 others (a
difference of order ε/V). Evaluation reports the unsmoothed NLL.
"""

import bisect
from collections import Counter
from pathlib import Path

import torch

from harness.data.base import Dataset, to_device
from harness.data.files import RemoteFile, fetch_files
from harness.data.iwslt_prepare import SPLITS, prepare, read_lines, remove_bpe
from harness.errors import DataNotFoundError
from harness.registry import register_dataset

IGNORE = -100
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BOS, PAD, EOS, UNK = range(4)
BATCHINGS = ("fairseq", "percentile_buckets")
MIRROR_FILES = [  # the mirror's pre-BPE IWSLT14 files (shared/data/README.md)
    RemoteFile("valid.de", "953cd9a0d85f996861f8f77d93e67f72"), RemoteFile("valid.en", "481d704963d0a48c29c8822df0c30630"),
    RemoteFile("test.de", "0112fd69eacd47e34cd3df11698ff5bc"), RemoteFile("test.en", "6478cd81d3e2f679fe72c32d43ef659e"),
]


class Dictionary:
    """fairseq's Dictionary built from lines: specials, then symbols by decreasing count, padded to a multiple of 8."""

    def __init__(self, lines, padding_factor=8):
        counts = Counter(word for line in lines for word in line.split())
        self.symbols = list(SPECIALS) + [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
        while len(self.symbols) % padding_factor:
            self.symbols.append(f"madeupword{len(self.symbols) - len(SPECIALS) - len(counts):04d}")
        self.index = {w: i for i, w in enumerate(self.symbols)}

    def __len__(self):
        return len(self.symbols)

    def encode(self, line):
        return torch.tensor([self.index.get(w, UNK) for w in line.split()] + [EOS], dtype=torch.long)

    def string(self, ids):
        return " ".join(self.symbols[i] for i in ids if i not in (BOS, PAD, EOS))


def token_batches(src_lengths, tgt_lengths, max_tokens, max_sentences, seed):
    """fairseq's ordered_indices + batch_by_size: a seeded shuffle, a stable sort by (target, source) length, then
    greedy batches whose padded size (sentences × longest) stays within max_tokens."""
    order = torch.randperm(len(src_lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order.sort(key=lambda i: tgt_lengths[i])
    order.sort(key=lambda i: src_lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        size = max(src_lengths[i], tgt_lengths[i])
        if size > max_tokens:
            raise ValueError(f"a sentence of {size} tokens is longer than dataset.max_tokens={max_tokens}")
        grown = max(longest, size)
        if current and (grown * (len(current) + 1) > max_tokens or (max_sentences and len(current) >= max_sentences)):
            batches.append(current)
            current, grown = [], size
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def percentile_boundaries(lengths, bucket_count):
    """numpy's 'lower' percentiles of `lengths` at 100/k, 200/k, ..., 100 (k = bucket_count), without repeats."""
    import numpy as np

    return sorted(set(np.percentile(np.asarray(lengths), np.linspace(0, 100, bucket_count + 1)[1:], method="lower").tolist()))


def round_up_to_boundaries(lengths, boundaries):
    """Each length replaced by the smallest boundary at or above it."""
    return [boundaries[bisect.bisect_left(boundaries, length)] for length in lengths]


def percentile_bucket_batches(src_lengths, tgt_lengths, max_tokens, bucket_count, max_sentences, seed):
    """The LLQR code's training batches (SimonDufLab/LLQR, dataloaders/iwslt14_de_en.py, train_shape_bucket_mode
    'percentile', rebuilt every epoch): the same seeded shuffle and stable (target, source) length sort as
    `token_batches`; source and target lengths each rounded up to their `bucket_count` percentile boundaries; the
    sentences of one rounded size max(src, tgt) cut, in that order, into batches of max_tokens // size sentences;
    the batches shuffled. Their code then pads every batch to that many rows and to the bucket's lengths (fixed shapes
    for XLA); padded rows and positions have no target, so the loss and its gradient are the same without it."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(src_lengths), generator=generator).tolist()
    order.sort(key=lambda i: tgt_lengths[i])
    order.sort(key=lambda i: src_lengths[i])
    src_rounded = round_up_to_boundaries(src_lengths, percentile_boundaries(src_lengths, bucket_count))
    tgt_rounded = round_up_to_boundaries(tgt_lengths, percentile_boundaries(tgt_lengths, bucket_count))
    buckets = {}
    for i in order:
        buckets.setdefault(max(src_rounded[i], tgt_rounded[i]), []).append(i)
    batches = []
    for size in sorted(buckets):
        capacity = max(1, max_tokens // size)
        capacity = min(capacity, max_sentences) if max_sentences else capacity
        batches += [buckets[size][start:start + capacity] for start in range(0, len(buckets[size]), capacity)]
    return [batches[int(k)] for k in torch.randperm(len(batches), generator=generator)]


def collate(pairs):
    """(src_tokens, prev_output_tokens), targets for a list of (src, tgt) id tensors, right-padded."""
    width_s, width_t = max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
    src = torch.full((len(pairs), width_s), PAD, dtype=torch.long)
    prev = torch.full((len(pairs), width_t), PAD, dtype=torch.long)
    targets = torch.full((len(pairs), width_t), IGNORE, dtype=torch.long)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = s
        targets[row, : len(t)] = t
        prev[row, 0] = EOS  # fairseq moves </s> to the front of the decoder input
        prev[row, 1 : len(t)] = t[:-1]
    return (src, prev), targets


class IWSLT14(Dataset):
    loss = "cross_entropy"
    metrics = ("perplexity",)
    label_smoothing = 0.1  # the paper's label-smoothed cross-entropy (applied in training; see the module docstring)

    def __init__(self, folder, max_tokens, max_sentences, seed, bleu_split, bleu_max_sentences, beam, lenpen, max_len_b=200, max_len_a=0.0,
                 batching="fairseq", bucket_count=8):
        self.folder, self.seed, self.max_tokens, self.max_sentences = Path(folder), int(seed), int(max_tokens), max_sentences
        self.batching, self.bucket_count, self._built, self._epoch_cache = batching, int(bucket_count), None, (None, None)
        text = {(split, lang): read_lines(self.folder / f"{split}.{lang}") for split in SPLITS for lang in ("de", "en")}
        self.src_dict, self.tgt_dict = Dictionary(text["train", "de"]), Dictionary(text["train", "en"])
        self.data = {split: [(self.src_dict.encode(s), self.tgt_dict.encode(t)) for s, t in zip(text[split, "de"], text[split, "en"])]
                     for split in SPLITS}
        self.references = {split: [remove_bpe(line) for line in text[split, "en"]] for split in SPLITS}
        first_epoch = self._epoch_batches(0)
        self.steps_per_epoch = len(first_epoch)  # the same every epoch with either batching
        self.batch_size = max(len(b) for b in first_epoch)
        self.bleu_split, self.bleu_max_sentences, self.beam, self.lenpen = bleu_split, bleu_max_sentences, beam, lenpen
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self.info = {"src_vocab_size": len(self.src_dict), "tgt_vocab_size": len(self.tgt_dict), "pad_index": PAD, "eos_index": EOS}

    def _batches(self, split, seed):
        pairs = self.data[split]
        return token_batches([len(s) for s, _ in pairs], [len(t) for _, t in pairs], self.max_tokens, self.max_sentences, seed)

    def _epoch_batches(self, epoch):
        """fairseq: batches built once from the seed, in a new order each epoch; percentile_buckets: rebuilt each
        epoch from that epoch's shuffle, as the LLQR code does."""
        if self._epoch_cache[0] != epoch:
            epoch_seed = self.seed * 1_000_003 + epoch
            if self.batching == "fairseq":
                if self._built is None:
                    self._built = self._batches("train", self.seed)
                order = torch.randperm(len(self._built), generator=torch.Generator().manual_seed(epoch_seed))
                batches = [self._built[int(k)] for k in order]
            else:
                pairs = self.data["train"]
                batches = percentile_bucket_batches([len(s) for s, _ in pairs], [len(t) for _, t in pairs], self.max_tokens,
                                                    self.bucket_count, self.max_sentences, epoch_seed)
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    def train_batch(self, step):
        epoch, position = divmod(step, self.steps_per_epoch)
        return collate([self.data["train"][i] for i in self._epoch_batches(epoch)[position]])

    def sample_batch(self, batch_size, generator):
        index = torch.randint(len(self.data["train"]), (batch_size,), generator=generator).tolist()
        return collate([self.data["train"][i] for i in index])

    def eval_batches(self):
        for batch in self._batches("valid", 0):
            yield collate([self.data["valid"][i] for i in batch])

    def final_metrics(self, model, device):
        """BLEU of beam-search translations of `bleu_split`: tokenized (fairseq-style, after --remove-bpe, on the
        lowercased Moses tokens) and detokenized sacreBLEU (Moses-detokenized hypotheses and references, 13a)."""
        from harness.models.beam_search import beam_search

        pairs = self.data[self.bleu_split][: self.bleu_max_sentences or None]
        hypotheses = []
        for batch in token_batches([len(s) for s, _ in pairs], [len(t) for _, t in pairs], self.max_tokens, 0, 0):
            (src, _), _ = collate([pairs[i] for i in batch])
            decoded = beam_search(model, to_device(src, device), beam=self.beam, max_len_a=self.max_len_a,
                                  max_len_b=self.max_len_b, lenpen=self.lenpen)
            hypotheses.extend((i, remove_bpe(self.tgt_dict.string(ids))) for i, ids in zip(batch, decoded))
        hypotheses = [h for _, h in sorted(hypotheses)]
        return bleu_scores(hypotheses, self.references[self.bleu_split][: len(pairs)], self.bleu_split)


def bleu_scores(hypotheses, references, split):
    """Both BLEU numbers papers quote, each labelled, from tokenized lowercased hypotheses and references."""
    import sacrebleu
    from sacremoses import MosesDetokenizer

    tokenized = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", force=True).score
    detok = MosesDetokenizer(lang="en")
    detokenized = sacrebleu.corpus_bleu([detok.detokenize(h.split()) for h in hypotheses],
                                        [[detok.detokenize(r.split()) for r in references]]).score
    return {f"{split}/bleu_tokenized_fairseq": tokenized, f"{split}/sacrebleu_detokenized": detokenized}


def locate_prepared(paths, data_dir, train_from, bpe_merges):
    """The prepared BPE folder, preparing the mirror's valid/test into the cache when `train_from == "valid"`."""
    candidates = [Path(data_dir).expanduser()] if data_dir else []
    candidates.append(paths.root / ("iwslt14_de_en_bpe" if train_from == "train" else f"iwslt14_de_en_subword_nmt_from_valid_{bpe_merges}"))
    for folder in candidates:
        if all((folder / f"{s}.{lang}").is_file() for s in SPLITS for lang in ("de", "en")):
            return folder
    if train_from == "valid" and not data_dir:
        source = fetch_files("IWSLT14 de-en", paths, "iwslt14_de_en", MIRROR_FILES)
        return prepare(candidates[-1], tokenized=source, train_from="valid", bpe_merges=bpe_merges)
    raise DataNotFoundError(
        f"IWSLT14 de-en: no prepared BPE files ({{train,valid,test}}.{{de,en}}) in {', '.join(map(str, candidates))}. "
        f"Run `python -m scripts.prepare_iwslt14 --tokenized <folder with pre-BPE train/valid/test.de/en> --out {candidates[-1]}` "
        "(the mirror has no train split), or use dataset.train_from=valid for the mirror-only mini task."
    )


@register_dataset("iwslt14_de_en")
def iwslt14_de_en(paths, batch_size=0, seed=0, max_tokens=4096, data_dir=None, train_from="train", bpe_merges=10000,
                  bleu_split="test", bleu_max_sentences=None, beam=5, lenpen=1.0, max_len_b=200, label_smoothing=0.1,
                  max_len_a=0.0, batching="fairseq", bucket_count=8):
    """IWSLT14 de→en; `batch_size` caps sentences per batch (0: only max_tokens, fairseq's default); `batching`
    fairseq (`token_batches`) or percentile_buckets (the LLQR code's, `percentile_bucket_batches`)."""
    if bleu_split not in SPLITS:
        raise ValueError(f"dataset.bleu_split={bleu_split!r} is invalid; choose one of {list(SPLITS)}")
    if batching not in BATCHINGS:
        raise ValueError(f"dataset.batching={batching!r} is invalid; choose one of {list(BATCHINGS)}")
    if int(bucket_count) < 1:
        raise ValueError(f"dataset.bucket_count={bucket_count} is invalid; it must be a positive number of length buckets (the LLQR code: 8)")
    folder = locate_prepared(paths, data_dir, train_from, bpe_merges)
    data = IWSLT14(folder, max_tokens, batch_size, seed, bleu_split, bleu_max_sentences, beam, lenpen, max_len_b, max_len_a,
                   batching, bucket_count)
    data.label_smoothing = float(label_smoothing)
    return data
