"""IWSLT14 preparation (fairseq's recipe step by step), the dataset's fairseq conventions, BLEU, and the script."""

from collections import Counter

import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.data.iwslt import (EOS, IGNORE, PAD, UNK, Dictionary, bleu_scores, collate, percentile_boundaries,
                                percentile_bucket_batches, round_up_to_boundaries, token_batches)
from harness.data.iwslt_prepare import (PreparationError, apply_bpe, clean_pairs, learn_joint_bpe, moses_tokenize_lower,
                                        read_lines, remove_bpe, split_every)
from harness.errors import ConfigError, DataNotFoundError
from scripts import prepare_iwslt14
from tests.conftest import SHARED_DATA

needs_mirror = pytest.mark.skipif(not (SHARED_DATA / "iwslt14_de_en").is_dir(), reason="the offline mirror is not here")
GERMAN = ["Das ist ein Test.", "Wir sind \"hier\" & dort!", "Guten Morgen, Welt."]
ENGLISH = ["This is a test.", "We're \"here\" & there!", "Good morning, world."]


def test_moses_tokenization_escapes_and_lowercases_like_the_mirror_files():
    assert moses_tokenize_lower(ENGLISH, "en") == ["this is a test .", "we &apos;re &quot; here &quot; &amp; there !", "good morning , world ."]
    assert moses_tokenize_lower(GERMAN[:1], "de") == ["das ist ein test ."]


def test_clean_pairs_follows_clean_corpus_n():
    src = ["a b", "a", "a b c d", " ".join(["w"] * 176), "", "x  y"]
    tgt = ["c d", "b c d", "e f g h", "z", "q", "u v"]
    kept = clean_pairs(src, tgt, min_len=1, max_len=175, ratio=1.5)
    assert kept == (["a b", "a b c d", "x y"], ["c d", "e f g h", "u v"])  # ratio 3 and the 176-token line are dropped


def test_valid_is_every_23rd_line():
    train, valid = split_every([str(i) for i in range(1, 70)])
    assert valid == ["23", "46", "69"] and len(train) == 66


def test_bpe_round_trips_and_marks_pieces():
    text = ["the quick brown fox", "the lazy dog jumps", "quickly foxes jump"] * 5
    codes = learn_joint_bpe([text], merges=40)
    encoded = apply_bpe(codes, text + ["unseen ünïcode"])
    assert any("@@ " in line for line in encoded)
    assert [remove_bpe(line) for line in encoded] == text + ["unseen ünïcode"], "remove-bpe restores the tokens exactly"


def test_bpe_learns_the_requested_merges_most_frequent_pair_first():
    """subword-nmt's codes: a version line, then `merges` pairs, the first the most frequent adjacent symbol pair,
    counted here by hand with the word-final symbol marked </w>."""
    text = [["der die das", "die dinge", "das ende"], ["the thing", "these things", "then"]]
    pairs = Counter()
    for word in " ".join(line for part in text for line in part).split():
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        pairs.update(zip(symbols, symbols[1:]))
    (best, count), (_, runner_up) = pairs.most_common(2)
    assert count > runner_up, "the fixture has one most frequent pair"
    codes = learn_joint_bpe(text, merges=6).splitlines()
    assert codes[0] == "#version: 0.2" and len(codes) == 1 + 6
    assert tuple(codes[1].split()) == best


def test_dictionary_follows_fairseq():
    d = Dictionary(["b a b", "c b"])
    assert d.symbols[:7] == ["<s>", "<pad>", "</s>", "<unk>", "b", "a", "c"] and len(d) == 8  # padded to a multiple of 8
    assert d.encode("a zzz").tolist() == [d.index["a"], UNK, EOS]
    assert d.string([d.index["c"], d.index["a"], EOS, PAD]) == "c a"


def test_collate_shifts_the_target_and_ignores_padding():
    (src, prev), targets = collate([(torch.tensor([5, 6, EOS]), torch.tensor([7, 8, EOS])), (torch.tensor([9, EOS]), torch.tensor([7, EOS]))])
    assert src.tolist() == [[5, 6, EOS], [9, EOS, PAD]]
    assert prev.tolist() == [[EOS, 7, 8], [EOS, 7, PAD]]
    assert targets.tolist() == [[7, 8, EOS], [7, EOS, IGNORE]]


def test_token_batches_respect_max_tokens_and_cover_every_sentence():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(1, 30, (200,), generator=g).tolist(), torch.randint(1, 30, (200,), generator=g).tolist()
    batches = token_batches(src, tgt, max_tokens=100, max_sentences=0, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len(b) * max(max(src[i], tgt[i]) for i in b) <= 100 for b in batches)
    assert batches == token_batches(src, tgt, 100, 0, 3)
    with pytest.raises(ValueError, match="longer than dataset.max_tokens=20"):
        token_batches([25], [3], 20, 0, 0)


def test_percentile_boundaries_and_rounding_by_hand():
    lengths = [3, 5, 5, 7, 9, 12, 20, 40]
    # numpy 'lower' percentiles at 25/50/75/100 % of 8 sorted values: positions 1.75, 3.5, 5.25, 7 -> 5, 7, 12, 40
    assert percentile_boundaries(lengths, 4) == [5, 7, 12, 40]
    assert round_up_to_boundaries([1, 5, 6, 13, 40], [5, 7, 12, 40]) == [5, 5, 7, 40, 40]
    assert percentile_boundaries([4] * 10, 8) == [4], "repeated boundaries collapse"


def test_percentile_bucket_batches_follow_the_llqr_rule():
    """Each batch holds sentences of one rounded size max(src, tgt) and max_tokens // size of them (fewer only for
    a bucket's last batch); every sentence once; rebuilt per seed; the batch count depends on the lengths only."""
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(2, 60, (500,), generator=g).tolist(), torch.randint(2, 60, (500,), generator=g).tolist()
    src_b, tgt_b = percentile_boundaries(src, 8), percentile_boundaries(tgt, 8)
    size = [max(a, b) for a, b in zip(round_up_to_boundaries(src, src_b), round_up_to_boundaries(tgt, tgt_b))]
    batches = percentile_bucket_batches(src, tgt, max_tokens=400, bucket_count=8, max_sentences=0, seed=5)
    assert sorted(i for b in batches for i in b) == list(range(500))
    per_size = Counter()
    for b in batches:
        (bucket,) = {size[i] for i in b}
        assert len(b) <= 400 // bucket
        per_size[bucket] += 1
    assert all(per_size[k] == -(-size.count(k) // (400 // k)) for k in per_size), "full batches but a bucket's last"
    other = percentile_bucket_batches(src, tgt, 400, 8, 0, seed=6)
    assert len(other) == len(batches) and other != batches
    assert percentile_bucket_batches(src, tgt, 400, 8, 0, seed=5) == batches
    assert max(len(b) for b in percentile_bucket_batches(src, tgt, 400, 8, 3, seed=5)) == 3, "batch_size still caps"


def test_bleu_is_labelled_and_perfect_for_identical_text():
    refs = ["this is a small test , isn &apos;t it ?", "another sentence here ."]
    scores = bleu_scores(refs, refs, "test")
    assert scores == {"test/bleu_tokenized_fairseq": pytest.approx(100.0), "test/sacrebleu_detokenized": pytest.approx(100.0)}
    worse = bleu_scores(["this is a test , isn &apos;t it ?", "another sentence ."], refs, "test")
    assert 0 < worse["test/bleu_tokenized_fairseq"] < 100


@needs_mirror
def test_mini_task_from_the_mirror(tmp_path):
    paths = DataPaths(tmp_path / "cache", SHARED_DATA, False)
    data = build_dataset({"name": "iwslt14_de_en", "train_from": "valid", "bpe_merges": 600, "max_tokens": 800}, paths, seed=0)
    assert len(data.data["train"]) == 7283 - 7283 // 23 and len(data.data["test"]) == 6750
    originals = read_lines(SHARED_DATA / "iwslt14_de_en" / "test.en")
    assert data.references["test"][:50] == originals[:50], "references are the mirror's tokenized text"
    (src, prev), targets = data.train_batch(0)
    assert src.numel() <= 800 and prev.shape == targets.shape
    assert data.info["src_vocab_size"] % 8 == 0 and data.info["pad_index"] == PAD


def test_missing_prepared_data_says_what_to_run(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"no prepared BPE files .*scripts\.prepare_iwslt14 .*train_from=valid"):
        build_dataset({"name": "iwslt14_de_en"}, DataPaths(tmp_path / "cache", None, False), seed=0)


def _write_pairs(folder, split, de, en):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    (folder / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")


def test_script_prepares_raw_text(tmp_path, capsys):
    _write_pairs(tmp_path / "raw", "train", GERMAN * 20, ENGLISH * 20)
    _write_pairs(tmp_path / "raw", "test", GERMAN, ENGLISH)
    assert prepare_iwslt14.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--bpe-merges", "200"]) == 0
    assert len(read_lines(tmp_path / "out" / "valid.en")) == 60 // 23
    assert [remove_bpe(x) for x in read_lines(tmp_path / "out" / "test.en")] == moses_tokenize_lower(ENGLISH, "en")


def test_script_error_messages(tmp_path, capsys):
    assert prepare_iwslt14.main(["--tokenized", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    _write_pairs(tmp_path / "tok", "valid", ["a b"], ["c d"])
    _write_pairs(tmp_path / "tok", "test", ["a b", "x"], ["c d"])
    assert prepare_iwslt14.main(["--tokenized", str(tmp_path / "tok"), "--out", str(tmp_path / "o")]) == 2
    assert "train.de" in capsys.readouterr().err, "the missing train split is named"
    assert prepare_iwslt14.main(["--tokenized", str(tmp_path / "tok"), "--out", str(tmp_path / "o"), "--train-from", "valid"]) == 2
    assert "test.de has 2 lines but test.en has 1" in capsys.readouterr().err
    assert prepare_iwslt14.main(["--raw", str(tmp_path / "tok"), "--out", str(tmp_path / "o"), "--bpe-merges", "5"]) == 2
    assert "too small" in capsys.readouterr().err
    with pytest.raises(PreparationError, match="exactly one input folder"):
        from harness.data.iwslt_prepare import tokenized_splits

        tokenized_splits(tokenized=tmp_path, raw=tmp_path)


def test_dataset_batching_options(tmp_path):
    german = [f"{g} {' '.join(['noch'] * k)}" for k in range(12) for g in GERMAN]
    english = [f"{e} {' '.join(['still'] * k)}" for k in range(12) for e in ENGLISH]
    _write_pairs(tmp_path / "raw", "train", german * 3, english * 3)
    _write_pairs(tmp_path / "raw", "test", GERMAN, ENGLISH)
    assert prepare_iwslt14.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "bpe"), "--bpe-merges", "100"]) == 0
    config = {"name": "iwslt14_de_en", "data_dir": str(tmp_path / "bpe"), "max_tokens": 60}
    paths = DataPaths(tmp_path / "cache", None, False)
    for batching in ("fairseq", "percentile_buckets"):
        data = build_dataset({**config, "batching": batching, "bucket_count": 4}, paths, seed=0)
        for epoch in (0, 1):
            rows = 0
            for position in range(data.steps_per_epoch):
                (src, prev), targets = data.train_batch(epoch * data.steps_per_epoch + position)
                rows += src.shape[0]
                assert src.shape[0] * max(src.shape[1], prev.shape[1]) <= 60
            assert rows == len(data.data["train"]), f"{batching}: every training sentence once in epoch {epoch}"
    with pytest.raises(ConfigError, match=r"dataset.batching='buckets' is invalid; choose one of \['fairseq', 'percentile_buckets'\]"):
        build_dataset({**config, "batching": "buckets"}, paths, seed=0)
    with pytest.raises(ConfigError, match="dataset.bucket_count=0 is invalid"):
        build_dataset({**config, "batching": "percentile_buckets", "bucket_count": 0}, paths, seed=0)
