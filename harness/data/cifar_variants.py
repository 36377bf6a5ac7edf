"""CIFAR variants of the PSGD paper's Table 3 (psgd_notes.md §6.3) and the LLQR code's long-tailed CIFAR.

All but NTGA read the CIFAR pickle batches as `harness.data.vision` does, and all use the standard augmentation
(random crop with padding 4, horizontal flip, normalisation); the test split is the standard, clean one except for
NTGA, whose test images are the attacked ones.
"""

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.base import ArrayDataset
from harness.data.vision import cifar_dataset, locate_cifar, read_cifar_folder
from harness.errors import DataNotFoundError
from harness.registry import register_dataset

# PSGD Table 3 "Adversarial" (reference create_adv_dataset): the NTGA release of Yuan & Wu (2021), CIFAR-10 split into
# 40k training images, perturbed by the Neural Tangent Generalization Attack ("ntga_cnn_best"), and 10k clean ones.
NTGA_FILES = {"train": ("x_val_cifar10.npy", "y_val_cifar10.npy"),
              "test": ("x_train_cifar10_ntga_cnn_best.npy", "y_train_cifar10.npy")}
NTGA_SOURCE = "github.com/lionelmessi6410/ntga (CIFAR-10, ntga_cnn_best)"


def _check_classes(classes):
    if classes not in (10, 100):
        raise ValueError(f"dataset.classes={classes} is invalid; choose 10 or 100")


def class_imbalance_indices(labels, classes, num_reduced=5, factor=0.1, seed=0):
    """`create_class_imb_cifar10`: `num_reduced` classes drawn with np.random.choice after seeding with `seed`, each cut
    to int(factor · smallest class count) samples (the first ones in dataset order: our choice; 500 on CIFAR-10)."""
    reduced = np.random.RandomState(seed).choice(classes, num_reduced, replace=False)
    keep_count = int(factor * int(torch.bincount(labels, minlength=classes).min()))
    keep = torch.ones(len(labels), dtype=torch.bool)
    for c in reduced.tolist():
        members = torch.nonzero(labels == c).flatten()
        keep[members[keep_count:]] = False
    return torch.nonzero(keep).flatten(), sorted(reduced.tolist())


def instance_noisy_labels(images_hwc_uint8, labels, noise_rate=0.6, classes=10, noise_seed=0):
    """`noisify_instance` of the reference code: with NumPy's global RNG seeded at `noise_seed` (0 in the reference),
    draw flip rates q_i ~ N(noise_rate, 0.1) kept in (0, 1) (the first len(labels) of 10⁶ draws), W ~ N(0, 1) of shape
    (3072, classes); each sample keeps its label with probability 1 − q_i, else goes to class j ≠ y with probability
    q_i·softmax(x_i W)_j, x_i its raw HWC uint8 pixels. Returns the noisy labels (a LongTensor)."""
    rng = np.random.RandomState(noise_seed)
    draws = rng.normal(loc=noise_rate, scale=0.1, size=1_000_000)
    q = draws[(draws > 0) & (draws < 1)][: len(labels)]
    if len(q) < len(labels):
        raise ValueError(f"noise_rate={noise_rate} leaves too few flip rates in (0, 1) for {len(labels)} samples")
    w = rng.normal(loc=0, scale=1, size=(images_hwc_uint8[0].size, classes))
    logits = torch.from_numpy(images_hwc_uint8.reshape(len(labels), -1).astype(np.float64) @ w)
    y = labels.numpy()
    logits[torch.arange(len(y)), torch.from_numpy(y)] = -1_000_000.0
    probabilities = q[:, None] * torch.softmax(logits, dim=1).numpy()
    probabilities[np.arange(len(y)), y] = 1.0 - q
    noisy = [rng.choice(np.arange(classes), p=p / p.sum()) for p in probabilities]
    return torch.tensor(noisy, dtype=torch.long)


def long_tailed_counts(per_class_max, classes, imbalance_ratio=100.0):
    """The LLQR code's exponential profile: class i keeps round(max · (1/ratio)^(i/(K−1))) samples, at least 1."""
    return [max(1, int(round(per_class_max * (1.0 / imbalance_ratio) ** (i / (classes - 1))))) for i in range(classes)]


def long_tailed_indices(labels, classes, imbalance_ratio=100.0, lt_seed=42):
    """Per class, a seeded shuffle (seed lt_seed + class, as the LLQR code seeds its per-class shuffles; the TF
    shuffle itself is not reproduced) and the first count samples."""
    counts = long_tailed_counts(len(labels) // classes, classes, imbalance_ratio)
    chosen = []
    for c, count in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        order = torch.from_numpy(np.random.RandomState(lt_seed + c).permutation(len(members)))
        chosen.append(members[order[:count]])
    return torch.cat(chosen).sort().values, counts


def blur(images, low=8):
    """The blur deficit (Achille et al. 2017): down-sample to low×low and back up, both bilinear (antialiased down)."""
    size = images.shape[-1]
    small = F.interpolate(images, size=(low, low), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


class BlurDeficitDataset(ArrayDataset):
    """Training images are blurred during the first `blur_epochs` epochs, clean afterwards; the test set is clean."""

    def __init__(self, *args, blur_epochs=100, blur_size=8, **kwargs):
        super().__init__(*args, **kwargs)
        self.blur_steps, self.blur_size, self._blurring = blur_epochs * self.steps_per_epoch, blur_size, True

    def train_batch(self, step):
        self._blurring = step < self.blur_steps  # sample_batch follows the phase of the last training step
        return super().train_batch(step)

    def _transformed(self, index, generator):
        inputs, targets = self.train_x[index], self.train_y[index]
        if self._blurring:
            inputs = blur(inputs, self.blur_size)
        if self.augment is not None:
            inputs = self.augment(inputs, generator)
        return inputs, targets


@register_dataset("cifar_class_imbalance")
def cifar_class_imbalance(paths, batch_size=128, seed=0, classes=10, num_reduced=5, factor=0.1, augment=True, cutout=0):
    """PSGD Table 3 "Class Imbalance": 5 random classes (seeded by the run seed) cut to a tenth."""
    _check_classes(classes)
    (train_x, train_y), test = read_cifar_folder(locate_cifar(paths, classes), classes)
    keep, reduced = class_imbalance_indices(train_y, classes, num_reduced, factor, seed)
    data = cifar_dataset((train_x[keep], train_y[keep]), test, classes, batch_size, seed, augment, cutout)
    data.reduced_classes = reduced
    return data


@register_dataset("cifar_noisy_labels")
def cifar_noisy_labels(paths, batch_size=128, seed=0, classes=10, noise_rate=0.6, noise_seed=0, augment=True, cutout=0):
    """PSGD Table 3 "Noisy labels": instance-dependent label noise at `noise_rate` (reference `noisify_instance`)."""
    _check_classes(classes)
    (train_x, train_y), test = read_cifar_folder(locate_cifar(paths, classes), classes)
    pixels = (train_x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as the reference
    noisy = instance_noisy_labels(pixels, train_y, noise_rate, classes, noise_seed)
    data = cifar_dataset((train_x, noisy), test, classes, batch_size, seed, augment, cutout)
    data.clean_labels, data.actual_noise_rate = train_y, float((noisy != train_y).float().mean())
    return data


@register_dataset("cifar_blur_deficit")
def cifar_blur_deficit(paths, batch_size=128, seed=0, classes=10, blur_epochs=100, blur_size=8, augment=True, cutout=0):
    """PSGD Table 3 "Blur deficit": images down-sampled to 8×8 and back for the first `blur_epochs` epochs."""
    _check_classes(classes)
    train, test = read_cifar_folder(locate_cifar(paths, classes), classes)
    return cifar_dataset(train, test, classes, batch_size, seed, augment, cutout, cls=BlurDeficitDataset,
                         blur_epochs=blur_epochs, blur_size=blur_size)


@register_dataset("cifar_long_tailed")
def cifar_long_tailed(paths, batch_size=128, seed=0, classes=10, imbalance_ratio=100.0, lt_seed=42, augment=True, cutout=0):
    """The LLQR code's CIFAR-10/100-LT: an exponential profile from 5000 (500) down to 50 (5) per class at ratio 100."""
    _check_classes(classes)
    (train_x, train_y), test = read_cifar_folder(locate_cifar(paths, classes), classes)
    keep, counts = long_tailed_indices(train_y, classes, imbalance_ratio, lt_seed)
    data = cifar_dataset((train_x[keep], train_y[keep]), test, classes, batch_size, seed, augment, cutout)
    data.class_counts = counts
    return data


def locate_ntga(paths, folder):
    """The folder holding the four NTGA files: `<mirror>/<folder>` first, then `<root>/<folder>` (no published
    checksums exist to verify them against)."""
    names = [name for pair in NTGA_FILES.values() for name in pair]
    places = [base / folder for base in (paths.mirror, paths.root) if base is not None]
    for place in places:
        if all((place / name).is_file() for name in names):
            return place
    raise DataNotFoundError(f"CIFAR-10 NTGA (PSGD Table 3 'Adversarial') needs {', '.join(names)}; looked in "
                            f"{', '.join(map(str, places))}. Download the NTGA release from {NTGA_SOURCE} and put the "
                            f"four files in {paths.root / folder}")


def read_ntga_split(images_file, labels_file):
    """One split as the reference's AdvDataSet reads it: one-hot labels (argmax), HWC images in [0, 1] quantised by
    np.uint8(x · 255) (truncation, as the reference), returned as CHW images in [0, 1] and class indices."""
    one_hot, images = np.load(labels_file), np.load(images_file)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or one_hot.ndim != 2 or len(one_hot) != len(images):
        raise ValueError(f"{images_file} / {labels_file}: expected (n, 32, 32, 3) images and (n, 10) one-hot labels, "
                         f"got {images.shape} and {one_hot.shape}")
    pixels = torch.from_numpy(np.uint8(images * 255))
    return pixels.permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(np.argmax(one_hot, axis=1)).long()


@register_dataset("cifar_ntga")
def cifar_ntga(paths, batch_size=128, seed=0, folder="cifar10_ntga", augment=True, cutout=0):
    """PSGD Table 3 "Adversarial": train on NTGA's 10k clean held-out CIFAR-10 images, test on its 40k attacked
    ones. The reference also puts its test images through the training augmentation (random crop and flip); here
    they are only normalised, as every other test set (our choice)."""
    place = locate_ntga(paths, folder)
    train, test = (read_ntga_split(place / images, place / labels) for images, labels in NTGA_FILES.values())
    return cifar_dataset(train, test, 10, batch_size, seed, augment, cutout)
