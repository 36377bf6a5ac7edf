"""ImageNet from an ImageFolder tree (a small synthetic one here): shapes, determinism, the standard crops."""

import numpy as np
import pytest
import torch

from harness.data import DataPaths, build_dataset
from harness.data.imagenet import random_resized_crop_box
from harness.errors import DataNotFoundError
from tests.data.synthetic_files import write_image_folder


def test_batches_are_deterministic_and_normalised(tmp_path):
    write_image_folder(tmp_path / "tree", classes=3, per_class=4)
    cfg = {"name": "imagenet", "data_dir": str(tmp_path / "tree"), "batch_size": 5, "image_size": 24, "workers": 2}
    data = build_dataset(cfg, DataPaths(tmp_path / "cache", None, False), seed=1)
    assert data.info == {"num_classes": 3, "in_channels": 3, "image_size": 24} and data.steps_per_epoch == 2
    x, y = data.train_batch(3)
    assert x.shape == (5, 3, 24, 24) and y.shape == (5,) and set(y.tolist()) <= {0, 1, 2}
    again = build_dataset(cfg, DataPaths(tmp_path / "cache", None, False), seed=1)
    assert torch.equal(again.train_batch(3)[0], x), "a step's batch (crops, flips) depends only on (seed, step)"
    assert not torch.equal(data.train_batch(2)[0], x)
    batches = list(data.eval_batches())
    assert sum(len(t) for _, t in batches) == 6 and batches[0][0].shape[1:] == (3, 24, 24)
    assert -3 < float(x.min()) and float(x.max()) < 3


def test_random_resized_crop_boxes_stay_inside_and_respect_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(60, 40, rng)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert h * w <= 60 * 40 and (h * w >= 0.08 * 60 * 40 * 0.9 or (h, w) == (40, 53))


def test_missing_imagenet_explains_the_layout(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"ImageNet: no train/ and val/ .*dataset\.data_dir"):
        build_dataset({"name": "imagenet"}, DataPaths(tmp_path / "cache", None, False), seed=0)
