"""Per-example training statistics (PSGD Tables 6, 7, 10): forgetting events against a hand count, entropy and
margin against the formulas, the correlations against ranks computed by hand, pruning by forgettability, and the
statistics of a run that was interrupted and resumed against those of a run that was not."""

import json
import math

import numpy as np
import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.data.base import ArrayDataset
from harness.errors import ConfigError
from harness.example_stats import (STATS_FILE, ExampleStatistics, entropy_forgetting_correlations, most_forgettable,
                                   uncertainty_statistics)
from tests.data.synthetic_files import write_cifar_folder
from tests.harness.helpers import run, run_crashed_then_resumed


class LogitTable(torch.nn.Module):
    """Returns the logits stored for each example; inputs are example indices (as floats)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, inputs):
        return self.logits[inputs[:, 0].long()]


def dataset_of(labels, batch_size=2):
    n = len(labels)
    indices = torch.arange(n, dtype=torch.float64)[:, None]
    return ArrayDataset((indices, torch.tensor(labels)), None, batch_size, seed=0)


def logits_classifying(correct, labels, classes=3):
    """Logits that classify example i correctly exactly when correct[i]."""
    logits = torch.zeros(len(labels), classes, dtype=torch.float64)
    for i, (hit, y) in enumerate(zip(correct, labels)):
        logits[i, y if hit else (y + 1) % classes] = 5.0
    return logits


def test_forgetting_events_count_correct_to_wrong_transitions():
    labels = [0, 1, 2, 0, 1]
    history = [  # correctness of each example at checks 1..5
        [1, 0, 1, 0, 1],
        [0, 0, 1, 0, 1],
        [1, 1, 0, 0, 1],
        [0, 1, 1, 0, 1],
        [1, 0, 1, 0, 0],
    ]
    stats = ExampleStatistics(dataset_of(labels))
    for correct in history:
        stats.check(LogitTable(logits_classifying(correct, labels)), "cpu")

    expected = []
    for i in range(len(labels)):  # a forgetting event: correct at one check, wrong at the next
        column = [row[i] for row in history]
        expected.append(sum(1 for before, after in zip(column, column[1:]) if before and not after))
    assert stats.forgetting_events.tolist() == expected == [2, 1, 1, 0, 1]
    assert stats.checks == 5
    assert stats.forgetting_scores().tolist() == [2.0, 1.0, 1.0, math.inf, 1.0], "never learned: +inf"


def test_entropy_and_margin_follow_their_formulas():
    labels = [0, 2, 1]
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0], [40.0, 0.0, 0.0]], dtype=torch.float64)
    correct, entropy, margin = ExampleStatistics(dataset_of(labels)).classify(LogitTable(logits), "cpu")
    for i, y in enumerate(labels):
        z = [math.exp(v) for v in logits[i].tolist()]
        p = [v / sum(z) for v in z]
        assert entropy[i].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-12)
        assert margin[i].item() == pytest.approx(p[y] - max(q for k, q in enumerate(p) if k != y), rel=1e-12)
    assert correct.tolist() == [True, False, False]
    assert entropy[2].item() > 0, "float64: a confident prediction keeps a positive entropy (about 1.7e-16)"
    summary = uncertainty_statistics(entropy, margin)
    assert summary["train/entropy_min"] == entropy.min().item()
    assert summary["train/margin_mean"] == pytest.approx(margin.mean().item())
    assert summary["train/margin_max"] == margin.max().item()


def ranks(values):
    """1-based ranks of distinct values."""
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.arange(1, len(values) + 1)
    return out


def test_correlations_rank_never_learned_examples_as_the_most_forgettable():
    entropy = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.05, 0.7], dtype=torch.float64)
    scores = torch.tensor([0.0, 3.0, 1.0, math.inf, 2.0, 4.0], dtype=torch.float64)
    out = entropy_forgetting_correlations(entropy, scores)
    substituted = np.array([0.0, 3.0, 1.0, 5.0, 2.0, 4.0])  # +inf -> one more than the largest finite score
    spearman = np.corrcoef(ranks(entropy.numpy()), ranks(substituted))[0, 1]
    pearson = np.corrcoef(entropy.numpy(), substituted)[0, 1]
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    x = entropy.numpy()
    concordance = [np.sign(x[i] - x[j]) * np.sign(substituted[i] - substituted[j]) for i, j in pairs]
    assert out["forgetting/spearman"] == pytest.approx(spearman, rel=1e-12)
    assert out["forgetting/pearson"] == pytest.approx(pearson, rel=1e-12)
    assert out["forgetting/kendall_tau"] == pytest.approx(float(np.mean(concordance)), rel=1e-12)
    assert 0 <= out["forgetting/spearman_p"] <= 1 and -1 <= out["forgetting/weighted_tau"] <= 1
    constant = entropy_forgetting_correlations(entropy, torch.zeros(6, dtype=torch.float64))
    assert math.isnan(constant["forgetting/spearman"]), "no forgetting at all: no correlation, recorded as nan"


def write_scores(path, scores):
    np.savez(path, forgetting=np.asarray(scores, dtype=np.float64))
    return path


def test_most_forgettable_keeps_the_highest_scores_never_learned_first_ties_by_index(tmp_path):
    scores = [1.0, 0.0, math.inf, 3.0, 1.0, 0.0, 1.0]
    path = write_scores(tmp_path / "stats.npz", scores)
    by_hand = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    for keep in range(1, len(scores) + 1):
        assert most_forgettable(path, keep, len(scores)).tolist() == sorted(by_hand[:keep])
    assert most_forgettable(path, 3, 7).tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="scores 7 training examples, the dataset has 8"):
        most_forgettable(path, 3, 8)
    with pytest.raises(ValueError, match="keep_most_forgettable=0 must be between 1 and the 7"):
        most_forgettable(path, 0, 7)


def test_cifar_trains_on_the_most_forgettable_images_only(tmp_path):
    write_cifar_folder(tmp_path / "cache", per_class=6)
    paths = DataPaths(tmp_path / "cache", None, False)
    full = build_dataset({"name": "cifar10", "batch_size": 4, "augment": False}, paths, seed=0)
    scores = np.zeros(60)
    scores[[5, 17, 42]] = [2.0, math.inf, 1.0]
    stats_file = write_scores(tmp_path / "stats.npz", scores)
    pruned = build_dataset({"name": "cifar10", "batch_size": 2, "augment": False, "forgetting_stats": str(stats_file),
                            "keep_most_forgettable": 3}, paths, seed=0)
    assert torch.equal(pruned.train_x, full.train_x[[5, 17, 42]]) and torch.equal(pruned.train_y, full.train_y[[5, 17, 42]])
    assert torch.equal(pruned.test_x, full.test_x), "the test set is untouched"
    with pytest.raises(ConfigError, match="keep_most_forgettable=3 needs dataset.forgetting_stats"):
        build_dataset({"name": "cifar10", "keep_most_forgettable": 3}, paths, seed=0)


EPOCH = 22  # digits: 1,438 training images in batches of 64
TASK = ["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.example_stats=true", f"trainer.max_steps={3 * EPOCH}",
        f"checkpoint.every={EPOCH + 5}"]


def test_a_resumed_run_counts_the_same_forgetting_events_as_an_uninterrupted_one(tmp_path, monkeypatch):
    _, summary = run(TASK, tmp_path / "straight")
    # a crash after the checkpoint at EPOCH + 5 and the second epoch's check
    resumed_summary = run_crashed_then_resumed(TASK, tmp_path / "resumed", monkeypatch, crash_at_step=2 * EPOCH + 3)

    straight, resumed = (np.load(tmp_path / name / STATS_FILE) for name in ("straight", "resumed"))
    assert int(straight["checks"]) == 3 == summary["final"]["forgetting/checks"]
    for key in ("forgetting_events", "learned", "entropy", "margin", "correct"):
        assert np.array_equal(straight[key], resumed[key]), key
    assert summary["final"] == resumed_summary["final"]
    assert summary["final"]["train/accuracy"] == pytest.approx(float(straight["correct"].mean()))
    for key in ("train/entropy_min", "train/margin_mean", "forgetting/spearman", "forgetting/weighted_tau"):
        assert math.isfinite(summary["final"][key]), key
    recorded = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert recorded["final"]["forgetting/never_learned"] == int((~straight["learned"]).sum())


def test_a_checkpoint_without_example_statistics_cannot_be_resumed_with_them(tmp_path):
    run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=2"], tmp_path)
    with pytest.raises(ConfigError, match="written without trainer.example_stats"):
        run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.max_steps=4", "trainer.example_stats=true"],
            tmp_path)


def test_example_statistics_need_an_in_memory_classification_dataset(tmp_path):
    with pytest.raises(ConfigError, match="trainer.example_stats=true needs a classification dataset held in memory"):
        run(["model=xor_rnn", "dataset=delayed_xor", "optimizer=sgd", "trainer.max_steps=1",
             "trainer.example_stats=true"], tmp_path)


def test_the_forgetting_figure_groups_examples_by_their_forgetting_count(tmp_path, capsys):
    from scripts.forgetting_figure import groups, main

    entropy = np.array([1e-9, 2e-9, 0.5, 0.7, 1.1, 0.9, 2.0, 0.0])
    scores = np.array([0, 0, 1, 1, 2, 5, math.inf, 0], dtype=np.float64)
    parts = dict(groups(entropy, scores))
    assert {name: values.tolist() for name, values in parts.items()} == {
        "0": [1e-9, 2e-9, 0.0], "1": [0.5, 0.7], "2": [1.1], "3+": [0.9], "never\nlearned": [2.0]}
    assert "2" not in dict(groups(entropy[:2], scores[:2])), "empty groups are left out"

    run_dir = tmp_path / "run"
    run(["model=mlp", "dataset=digits", "optimizer=sgd", "trainer.example_stats=true", f"trainer.max_steps={2 * EPOCH}"],
        run_dir)
    main([str(run_dir), "--out", str(tmp_path / "fig.png")])
    out = capsys.readouterr().out
    assert "sgd, seed 0: 1438 examples" in out and "Spearman rho(entropy, forgetting)" in out
    assert (tmp_path / "fig.png").stat().st_size > 0
