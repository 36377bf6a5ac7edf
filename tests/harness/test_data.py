"""Datasets: task definitions checked against their specification, determinism, the mirror and checksums."""

import pickle

import numpy as np
import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.data.files import RemoteFile, fetch_files, file_md5
from harness.errors import ConfigError, DataNotFoundError
from tests.conftest import SHARED_DATA


def paths_for(tmp_path, mirror=None, download=False):
    return DataPaths(tmp_path / "cache", mirror, download)


def test_delayed_xor_matches_the_reference_definition(tmp_path):
    data = build_dataset({"name": "delayed_xor", "seq_len": 32, "batch_size": 256}, paths_for(tmp_path), seed=3)
    x, y = data.train_batch(5)
    assert x.shape == (256, 32, 2) and y.shape == (256,)
    assert set(x[:, :, 0].unique().tolist()) == {-1.0, 1.0}
    for sequence, label in zip(x, y):
        marks = torch.nonzero(sequence[:, 1]).flatten().tolist()
        first, second = marks[0], marks[-1]  # the two markers may coincide (psgd_notes.md §7)
        assert 1 <= len(marks) <= 2 and first < 0.1 * 32 and int(0.1 * 32) <= second < 0.5 * 32
        assert float(label) == float(sequence[first, 0] != sequence[second, 0])
    assert torch.equal(data.train_batch(5)[0], x), "a step's batch is deterministic"
    assert not torch.equal(data.train_batch(6)[0], x)


@pytest.mark.parametrize("operation", ["+", "-", "*", "/"])
def test_modular_arithmetic_labels(tmp_path, operation):
    p = 7
    data = build_dataset({"name": "modular_arithmetic", "p": p, "operation": operation, "batch_size": 8}, paths_for(tmp_path), seed=0)
    everything = torch.cat([data.train_x, data.test_x]), torch.cat([data.train_y, data.test_y])
    assert len(everything[0]) == (p * p if operation != "/" else p * (p - 1))
    for (a, op, b, eq), c in zip(everything[0].tolist(), everything[1].tolist()):
        assert op == p and eq == p + 1
        assert c == {"+": (a + b) % p, "-": (a - b) % p, "*": (a * b) % p, "/": None}[operation] or (operation == "/" and (c * b) % p == a)
    assert abs(len(data.train_x) / len(everything[0]) - 0.6) < 0.02


def test_epochs_are_permutations_and_resume_needs_only_the_step(tmp_path):
    data = build_dataset({"name": "digits", "batch_size": 100}, paths_for(tmp_path), seed=1)
    again = build_dataset({"name": "digits", "batch_size": 100}, paths_for(tmp_path), seed=1)
    seen = torch.cat([data.train_batch(s)[1] for s in range(data.steps_per_epoch)])
    assert len(seen) == data.steps_per_epoch * 100
    assert torch.equal(data.train_batch(37)[0], again.train_batch(37)[0])


def test_mirror_file_with_a_wrong_checksum_is_not_used(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "a.bin").write_bytes(b"corrupt")
    with pytest.raises(DataNotFoundError, match=r"toy: a\.bin .* looked at .*mirror/toy/a\.bin"):
        fetch_files("toy", paths_for(tmp_path, mirror), "toy", [RemoteFile("a.bin", "0" * 32)])
    good = RemoteFile("a.bin", file_md5(mirror / "toy" / "a.bin"))
    target = fetch_files("toy", paths_for(tmp_path, mirror), "toy", [good])
    assert (target / "a.bin").read_bytes() == b"corrupt", "a verified mirror file is copied into the cache"


def test_two_processes_copying_the_same_mirror_file_do_not_collide(tmp_path, monkeypatch):
    """Two runs starting together on one cache (two sweep lanes, a SLURM array) both copy the mirror file.

    The second process copies and renames after the first has copied but before it renames; the first must
    still finish. With one shared `.partial` name the first run's rename failed (FileNotFoundError), as
    happened to a sweep.
    """
    import harness.atomic
    import harness.data.files as files

    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "a.bin").write_bytes(b"payload")
    remote = RemoteFile("a.bin", file_md5(mirror / "toy" / "a.bin"))
    real_copy, real_pid = files.shutil.copyfile, harness.atomic.os.getpid
    interleaved = []

    def copy_then_let_another_process_fetch(source, target):
        copied = real_copy(source, target)
        if not interleaved:
            interleaved.append(target)
            monkeypatch.setattr(harness.atomic.os, "getpid", lambda: real_pid() + 1)
            fetch_files("toy", paths_for(tmp_path, mirror), "toy", [remote])  # the other process, start to end
            monkeypatch.setattr(harness.atomic.os, "getpid", real_pid)
        return copied

    monkeypatch.setattr(files.shutil, "copyfile", copy_then_let_another_process_fetch)
    target = fetch_files("toy", paths_for(tmp_path, mirror), "toy", [remote])
    assert interleaved, "the interleaving did not happen"
    assert (target / "a.bin").read_bytes() == b"payload"
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"], "no temporary file is left behind"


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="the offline mirror (../shared/data) is not on this machine")
def test_mnist_from_the_mirror(tmp_path):
    data = build_dataset({"name": "mnist", "batch_size": 64}, paths_for(tmp_path, SHARED_DATA), seed=0)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_y[:5].tolist() == [5, 0, 4, 1, 9]



@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="the offline mirror (../shared/data) is not on this machine")
def test_mnist_bernoulli_resampling_binarises_each_training_batch_anew(tmp_path):
    config = {"name": "mnist", "batch_size": 500, "normalize": False, "bernoulli_resample": True}
    data = build_dataset(config, paths_for(tmp_path, SHARED_DATA), seed=0)
    plain = build_dataset({**config, "bernoulli_resample": False}, paths_for(tmp_path, SHARED_DATA), seed=0)
    x, y = data.train_batch(3)
    x_plain, y_plain = plain.train_batch(3)
    assert torch.equal(y, y_plain) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x[x_plain == 0], torch.zeros_like(x[x_plain == 0])), "a black pixel stays black"
    assert torch.equal(x[x_plain == 1], torch.ones_like(x[x_plain == 1])), "a white pixel stays white"
    grey = (x_plain > 0.2) & (x_plain < 0.8)
    assert abs(x[grey].mean().item() - x_plain[grey].mean().item()) < 0.02, "E[draw] = the pixel's intensity"
    assert torch.equal(data.train_batch(3)[0], x), "the same step draws the same batch (resume)"
    assert not torch.equal(data.train_batch(4 + data.steps_per_epoch)[0], plain.train_batch(4 + data.steps_per_epoch)[0])
    assert torch.equal(data.test_x, plain.test_x), "the test set is not resampled"
    with pytest.raises(ConfigError, match="bernoulli_resample=true needs pixels in \\[0, 1\\]"):
        build_dataset({**config, "normalize": True}, paths_for(tmp_path, SHARED_DATA), seed=0)


def test_cifar_reads_an_extracted_pickle_folder(tmp_path):
    folder = tmp_path / "cache" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 20).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = build_dataset({"name": "cifar10", "batch_size": 16}, paths_for(tmp_path), seed=0)
    x, y = data.train_batch(0)
    assert x.shape == (16, 3, 32, 32) and len(data.train_x) == 100 and len(data.test_x) == 20
    assert not torch.equal(x, data.train_x[:16]), "augmentation changed the batch"
