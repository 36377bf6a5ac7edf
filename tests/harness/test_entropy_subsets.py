"""PSGD Table 11's pieces: prediction entropy, distance from initialisation, the oracle's entropy subsets."""

import math

import numpy as np
import pytest
import torch

from harness.data.base import ArrayDataset
from harness.errors import ConfigError, DataNotFoundError
from harness.metrics import DistanceFromInit, prediction_entropy
from tests.conftest import SHARED_DATA
from tests.harness.helpers import run


class FixedLogits(torch.nn.Module):
    """Returns the input as the logits (so a test chooses them exactly)."""

    def forward(self, x):
        return x


def test_prediction_entropy_is_analytic_down_to_confident_predictions():
    logits = torch.zeros(3, 10)
    logits[1, 0] = 40.0  # p₀ = 1/(1 + 9e⁻⁴⁰): entropy ≈ 9·41·e⁻⁴⁰ ≈ 1.6e-15, which float32 rounds to 0
    logits[2, :2] = 5.0
    entropy = prediction_entropy(FixedLogits(), logits, "cpu", batch_size=2)

    def analytic(row):
        weights = [math.exp(v) for v in row.tolist()]
        total = sum(weights)
        return -sum(w / total * math.log(w / total) for w in weights)

    assert entropy[0].item() == pytest.approx(math.log(10), rel=1e-12)
    for i in (1, 2):
        assert entropy[i].item() == pytest.approx(analytic(logits[i]), rel=1e-6)
    assert 1e-15 < entropy[1].item() < 2e-15


def test_distance_from_init_is_the_norm_of_the_change():
    model = torch.nn.Linear(3, 2)
    distance = DistanceFromInit(model)
    assert distance(model) == {"distance_from_init": 0.0}
    with torch.no_grad():
        model.weight[0, 0] += 3.0
        model.bias[1] -= 4.0
    assert distance(model)["distance_from_init"] == pytest.approx(5.0)


def test_distance_from_init_of_a_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    task = ["model=mlp", "dataset=digits", "trainer.max_steps=8", "checkpoint.every=4", "trainer.distance_from_init=true"]
    straight = run(task, tmp_path / "straight")[1]["final"]["distance_from_init"]
    original = ArrayDataset.train_batch

    def crash_after_the_checkpoint(self, step):
        if step == 5:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(ArrayDataset, "train_batch", crash_after_the_checkpoint)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(task, tmp_path / "resumed")
    monkeypatch.setattr(ArrayDataset, "train_batch", original)
    resumed = run(task, tmp_path / "resumed")[1]["final"]["distance_from_init"]
    assert straight > 0 and resumed == straight


def test_train_on_a_subset_needs_the_subsets_file(tmp_path):
    with pytest.raises(ConfigError, match="dataset.train_on='low_entropy' needs dataset.entropy_subsets"):
        run(["model=lenet5", "dataset=mnist", "dataset.train_on=low_entropy", "trainer.max_steps=1"], tmp_path)
    with pytest.raises(ConfigError, match="dataset.train_on='lowest' is invalid"):
        run(["model=lenet5", "dataset=mnist", f"dataset.entropy_subsets={tmp_path}/s.npz", "dataset.train_on=lowest",
             "trainer.max_steps=1"], tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="the offline mirror (../shared/data) is not on this machine")
def test_oracle_subsets_train_a_run_and_report_its_entropies(tmp_path, monkeypatch):
    """Oracle → scripts/entropy_subsets.py → a run on the low-entropy subset: the file splits the training set at
    the oracle's entropies, the run trains on those points only, and its summary records both subsets' entropies."""
    from harness.data import DataPaths, build_dataset
    from omegaconf import OmegaConf
    from scripts.entropy_subsets import main as rank

    monkeypatch.setenv("REPRO_DATA_MIRROR", str(SHARED_DATA))
    base = ["experiment=table11_lenet5_mnist_entropy", "trainer.epochs=null", "trainer.max_steps=3", "optimizer=sgd"]
    run(base, tmp_path / "oracle")
    subsets_file = tmp_path / "subsets.npz"
    with pytest.raises(DataNotFoundError, match="does not exist; write it with"):
        run([*base, f"dataset.entropy_subsets={subsets_file}"], tmp_path / "early")
    rank([str(tmp_path / "oracle"), "--out", str(subsets_file), "--size", "200"])
    with np.load(subsets_file) as stored:
        low, high, entropy = (torch.as_tensor(stored[k]) for k in ("low_entropy", "high_entropy", "entropy"))
    assert len(low) == len(high) == 200 and len(entropy) == 60_000
    assert entropy[low].max() <= entropy.sort().values[199] and entropy[high].min() >= entropy.sort().values[-200]

    cfg = OmegaConf.create({"name": "mnist", "normalize": False, "entropy_subsets": str(subsets_file),
                            "train_on": "low_entropy", "batch_size": 50})
    data = build_dataset(cfg, DataPaths(tmp_path / "cache", SHARED_DATA, False), 0)
    full = build_dataset(OmegaConf.create({"name": "mnist", "normalize": False, "batch_size": 50}),
                         DataPaths(tmp_path / "cache", SHARED_DATA, False), 0)
    assert data.steps_per_epoch == 4 and torch.equal(data.train_x, full.train_x[low])

    _, summary = run([*base, f"dataset.entropy_subsets={subsets_file}", "dataset.train_on=low_entropy",
                      "trainer.distance_from_init=true"], tmp_path / "low")
    final = summary["final"]
    assert 0 <= final["entropy/low_entropy_subset"] <= math.log(10) and final["distance_from_init"] > 0
    assert final["entropy/high_entropy_subset"] <= math.log(10)
