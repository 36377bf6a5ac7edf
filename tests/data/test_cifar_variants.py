"""The PSGD paper's CIFAR variants and the LLQR long-tailed CIFAR, on synthetic CIFAR pickle folders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.data import DataPaths, build_dataset
from harness.data.cifar_variants import blur, instance_noisy_labels, long_tailed_counts
from harness.data.vision import CIFAR_MEAN, CIFAR_STD
from harness.errors import DataNotFoundError
from tests.data.synthetic_files import write_cifar_folder, write_ntga_folder


def paths(tmp_path):
    return DataPaths(tmp_path / "cache", None, False)


def test_class_imbalance_cuts_five_seeded_classes_to_a_tenth(tmp_path):
    write_cifar_folder(tmp_path / "cache", per_class=30)
    data = build_dataset({"name": "cifar_class_imbalance", "batch_size": 8, "augment": False}, paths(tmp_path), seed=4)
    np.random.seed(4)  # the reference: set_seed(seed); np.random.choice(10, 5, replace=False)
    expected = sorted(np.random.choice(10, 5, replace=False).tolist())
    counts = torch.bincount(data.train_y, minlength=10).tolist()
    assert data.reduced_classes == expected
    assert counts == [3 if c in expected else 30 for c in range(10)]
    assert len(data.test_y) == 40, "the test set is untouched"


def reference_noisify_instance(train_data, train_labels, noise_rate, num_class):
    """The reference code's loop, transcribed as it is (global NumPy RNG, one sample at a time)."""
    np.random.seed(0)
    q_ = np.random.normal(loc=noise_rate, scale=0.1, size=1000000)
    q = []
    for pro in q_:
        if 0 < pro < 1:
            q.append(pro)
        if len(q) == len(train_labels):
            break
    w = np.random.normal(loc=0, scale=1, size=(train_data[0].size, num_class))
    noisy = []
    for i, sample in enumerate(train_data):
        p_all = np.matmul(sample.flatten(), w)
        p_all[train_labels[i]] = -1000000
        p_all = q[i] * F.softmax(torch.tensor(p_all), dim=0).numpy()
        p_all[train_labels[i]] = 1 - q[i]
        noisy.append(np.random.choice(np.arange(num_class), p=p_all / sum(p_all)))
    return noisy


def test_instance_noise_equals_the_reference_loop():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, 10, 300))
    ours = instance_noisy_labels(images, labels, noise_rate=0.6, classes=10, noise_seed=0)
    assert ours.tolist() == reference_noisify_instance(images, labels.tolist(), 0.6, 10)
    assert 0.45 < float((ours != labels).float().mean()) < 0.75


def test_noisy_label_dataset_keeps_a_clean_test_set(tmp_path):
    write_cifar_folder(tmp_path / "cache", per_class=20)
    data = build_dataset({"name": "cifar_noisy_labels", "batch_size": 8}, paths(tmp_path), seed=0)
    assert 0.3 < data.actual_noise_rate < 0.9 and torch.equal(data.clean_labels.bincount(), torch.full((10,), 20))
    again = build_dataset({"name": "cifar_noisy_labels", "batch_size": 8}, paths(tmp_path), seed=5)
    assert torch.equal(data.train_y, again.train_y), "the noise is fixed (NumPy seed 0) whatever the run seed, as the reference"
    assert torch.equal(data.test_y, torch.arange(10).repeat_interleave(4))


def test_blur_deficit_blurs_only_the_first_epochs(tmp_path):
    write_cifar_folder(tmp_path / "cache", per_class=4)
    data = build_dataset({"name": "cifar_blur_deficit", "batch_size": 8, "blur_epochs": 2, "augment": False}, paths(tmp_path), seed=0)
    assert data.steps_per_epoch == 5
    index = data._epoch_order(1)[:8]
    blurred, _ = data.train_batch(data.steps_per_epoch)  # epoch 1: still blurred
    assert torch.allclose(blurred, blur(data.train_x[index]))
    clean, _ = data.train_batch(2 * data.steps_per_epoch)
    assert torch.equal(clean, data.train_x[data._epoch_order(2)[:8]])
    assert not torch.allclose(blurred, data.train_x[index])


def test_blur_is_a_resize_to_8_and_back():
    images = torch.rand(2, 3, 32, 32)
    out = blur(images)
    assert out.shape == images.shape
    checkerboard = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0
    assert blur(checkerboard.expand(1, 3, 32, 32)).abs().max() < 0.1, "the finest detail is removed"
    constant = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(blur(constant), constant)


def test_long_tailed_counts_follow_the_llqr_profile():
    # Cao et al.'s CIFAR-10-LT (imbalance 100) floors 5000·0.01^(i/9): 5000 2997 1796 1077 645 387 232 139 83 50;
    # the LLQR code rounds instead, which changes classes 2 and 4 by one image.
    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1797, 1077, 646, 387, 232, 139, 83, 50]
    assert long_tailed_counts(500, 100, 100)[-1] == 5 and long_tailed_counts(7, 1 + 1, 1000) == [7, 1]


def test_long_tailed_dataset(tmp_path):
    write_cifar_folder(tmp_path / "cache", per_class=20)
    data = build_dataset({"name": "cifar_long_tailed", "batch_size": 4, "imbalance_ratio": 10}, paths(tmp_path), seed=0)
    assert torch.bincount(data.train_y, minlength=10).tolist() == data.class_counts == long_tailed_counts(20, 10, 10)
    assert data.class_counts[0] == 20 and data.class_counts[-1] == 2


def test_cifar100_variant_and_bad_classes(tmp_path):
    write_cifar_folder(tmp_path / "cache", classes=100, per_class=2, test_per_class=1)
    data = build_dataset({"name": "cifar_long_tailed", "classes": 100, "batch_size": 4, "imbalance_ratio": 2}, paths(tmp_path), seed=0)
    assert data.info["num_classes"] == 100 and len(data.test_y) == 100
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.classes=7 is invalid"):
        build_dataset({"name": "cifar_blur_deficit", "classes": 7}, paths(tmp_path), seed=0)


def test_ntga_trains_on_the_clean_images_and_tests_on_the_attacked_ones_as_the_reference_reads_them(tmp_path):
    folder = write_ntga_folder(tmp_path / "cache" / "cifar10_ntga", train=20, test=30)
    data = build_dataset({"name": "cifar_ntga", "batch_size": 4, "augment": False}, paths(tmp_path), seed=0)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    for (images_name, labels_name), x, y in (
            (("x_val_cifar10.npy", "y_val_cifar10.npy"), data.train_x, data.train_y),
            (("x_train_cifar10_ntga_cnn_best.npy", "y_train_cifar10.npy"), data.test_x, data.test_y)):
        raw = np.load(folder / images_name)
        # AdvDataSet: np.uint8(x * 255) (truncating), ToTensor (HWC -> CHW, / 255), Normalize
        expected = torch.from_numpy(np.uint8(raw * 255).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        torch.testing.assert_close(x, (expected - mean) / std)
        assert y.tolist() == np.argmax(np.load(folder / labels_name), axis=1).tolist()
    assert len(data.train_y) == 20 and len(data.test_y) == 30 and data.info["num_classes"] == 10


def test_ntga_without_its_files_says_where_to_get_them(tmp_path):
    with pytest.raises(DataNotFoundError, match="lionelmessi6410/ntga"):
        build_dataset({"name": "cifar_ntga"}, paths(tmp_path), seed=0)
