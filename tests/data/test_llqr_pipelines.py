"""The LLQR code's data pipelines (SimonDufLab/LLQR @ d2c62b3, lqr_optimizer/_src/utils/utils.py), checked on tiny
hand-made images: CIFAR statistics per dataset, reflect padding, Cutout clipped at the border that blacks out raw
pixels, and ImageNet's "squash" resize (tf.image.resize: bilinear, half-pixel centres)."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import DataPaths, build_dataset
from harness.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, squashed
from harness.data.vision import cifar_dataset, random_crop_flip, read_cifar_folder
from tests.data.synthetic_files import write_cifar_folder

# The numbers of the LLQR code's prepare_dataloader, copied from it
AUTHORS_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def channel(values):
    return torch.tensor(values).view(3, 1, 1)


@pytest.mark.parametrize("classes", [10, 100])
def test_per_dataset_normalisation_uses_the_authors_statistics(tmp_path, classes):
    folder = write_cifar_folder(tmp_path / "cache", classes=classes, per_class=2 if classes == 100 else 4,
                                test_per_class=1)
    (train_x, _), (test_x, _) = read_cifar_folder(folder, classes)
    paths, cfg = DataPaths(tmp_path / "cache", None, False), {"name": f"cifar{classes}", "batch_size": 4}
    mean, std = AUTHORS_STATS[classes]
    data = build_dataset({**cfg, "normalization": "per_dataset"}, paths, seed=0)
    torch.testing.assert_close(data.test_x, (test_x - channel(mean)) / channel(std))
    torch.testing.assert_close(data.train_x, (train_x - channel(mean)) / channel(std))
    default = build_dataset(cfg, paths, seed=0)  # unchanged: CIFAR-10's mean and std 0.2023... for both sets
    adabelief_mean, adabelief_std = channel((0.4914, 0.4822, 0.4465)), channel((0.2023, 0.1994, 0.2010))
    torch.testing.assert_close(default.test_x, (test_x - adabelief_mean) / adabelief_std)


def windows(array, size):
    return {tuple(array[i : i + size, j : j + size].flatten().tolist()) for i in range(len(array) - size + 1)
            for j in range(len(array) - size + 1)}


@pytest.mark.parametrize("padding,padded", [
    ("reflect", [[5, 4, 5, 6, 5], [2, 1, 2, 3, 2], [5, 4, 5, 6, 5], [8, 7, 8, 9, 8], [5, 4, 5, 6, 5]]),
    ("zeros", [[0, 0, 0, 0, 0], [0, 1, 2, 3, 0], [0, 4, 5, 6, 0], [0, 7, 8, 9, 0], [0, 0, 0, 0, 0]]),
])
def test_crops_are_windows_of_the_padded_image(padding, padded):
    image = torch.arange(1.0, 10.0).view(1, 1, 3, 3).repeat(200, 1, 1, 1)
    out = random_crop_flip(pad=1, flip=False, padding=padding)(image, torch.Generator().manual_seed(0))
    seen = {tuple(crop.flatten().tolist()) for crop in out}
    assert seen == windows(np.array(padded), 3), "every crop is one of the nine windows, and each one occurs"


def test_cutout_is_clipped_at_the_border_and_applied_half_the_time():
    n, side, size, fill = 400, 8, 4, -7.0
    augment = random_crop_flip(pad=0, flip=False, cutout=size, cutout_fill=fill)
    out = augment(torch.ones(n, 1, side, side), torch.Generator().manual_seed(1))
    # centre c uniform in [0, 8): rows (and columns) [max(c − 2, 0), min(c + 2, 8))
    spans = {(max(c - size // 2, 0), min(c + size // 2, side)) for c in range(side)}
    masked, heights = 0, set()
    for image in out[:, 0]:
        rows, cols = torch.nonzero(image == fill, as_tuple=True)
        assert set(image.unique().tolist()) <= {1.0, fill}
        if len(rows):
            masked += 1
            r, c = (int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1)
            assert r in spans and c in spans and len(rows) == (r[1] - r[0]) * (c[1] - c[0]), "a clipped square"
            heights.add(r[1] - r[0])
    assert 0.4 < masked / n < 0.6
    assert heights == {2, 3, 4}, "squares at the border are clipped, not moved inside"


def test_cifar_cutout_blacks_out_raw_pixels_and_reflect_padding_adds_no_new_values():
    grey = torch.full((64, 3, 32, 32), 0.5)
    labels = torch.zeros(64, dtype=torch.long)
    mean, std = AUTHORS_STATS[10]
    data = cifar_dataset((grey, labels), (grey[:2], labels[:2]), 10, 64, 0, True, 16, "per_dataset", "reflect")
    x, _ = data.train_batch(0)
    grey_value, black = (0.5 - channel(mean)) / channel(std), (0.0 - channel(mean)) / channel(std)
    is_grey, is_black = torch.isclose(x, grey_value.expand_as(x)), torch.isclose(x, black.expand_as(x))
    assert torch.all(is_grey | is_black) and is_black.any()
    zero_padded = cifar_dataset((grey, labels), (grey[:2], labels[:2]), 10, 64, 0, True, 0, "per_dataset", "zeros")
    assert (zero_padded.train_batch(0)[0] == 0).any(), "the default pads with zeros of the normalised images"


def test_squash_is_tf_resize_bilinear_with_half_pixel_centres():
    image = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("RGB")  # 1 row, 2 columns
    out = squashed(image, 4)
    assert out.shape == (3, 4, 4)
    # source x = (x + 0.5) · 2/4 − 0.5, clamped at the edges: −0.25, 0.25, 0.75, 1.25
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(4, 4))


def write_wide_tree(root, count=3):
    """Images 20 high × 80 wide whose left quarter is black, the rest white; one class."""
    pixels = np.full((20, 80, 3), 255, dtype=np.uint8)
    pixels[:, :20] = 0
    for split in ("train", "val"):
        folder = root / split / "n00000000"
        folder.mkdir(parents=True)
        for k in range(count):
            Image.fromarray(pixels).save(folder / f"img_{k}.png")


def black_columns(images):
    black = (0.0 - channel(IMAGENET_MEAN)) / channel(IMAGENET_STD)
    return torch.isclose(images, black.expand_as(images), atol=1e-4).all(dim=1).all(dim=1).sum(dim=-1)


def test_squash_crop_keeps_the_whole_width(tmp_path):
    write_wide_tree(tmp_path / "tree")
    cfg = {"name": "imagenet", "data_dir": str(tmp_path / "tree"), "batch_size": 3, "image_size": 24, "workers": 1}
    paths = DataPaths(tmp_path / "cache", None, False)
    squash = build_dataset({**cfg, "crop": "squash"}, paths, seed=0)
    # evaluation: squashed to 27×27, column x samples source column (x + 0.5)·80/27 − 0.5, black (< 19) for x ≤ 6;
    # the centre 24 starts at column 2: 5 black columns. The inception crop resizes the short side to 27 (width 108)
    # and its centre crop is all white.
    assert set(black_columns(next(squash.eval_batches())[0]).tolist()) == {5}
    assert set(black_columns(next(build_dataset(cfg, paths, seed=0).eval_batches())[0]).tolist()) == {0}
    # training: 51×51 or 27×27 (black columns 0-11 or 0-6, as above), a random 24 crop, a random flip
    x, _ = squash.sample_batch(200, torch.Generator().manual_seed(0))
    assert x.shape == (200, 3, 24, 24)
    counts = black_columns(x)
    assert int(counts.max()) > 7 and int(counts.max()) <= 12, "some crops come from the larger square"
    assert bool((x[:, 0, 0, -1] < x[:, 0, 0, 0]).any()), "some crops are flipped (black on the right)"
