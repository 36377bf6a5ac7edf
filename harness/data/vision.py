"""Image classification datasets held in memory: scikit-learn digits, MNIST, CIFAR-10 and CIFAR-100."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.base import ArrayDataset, split_indices
from harness.data.files import RemoteFile, fetch_files
from harness.errors import DataNotFoundError
from harness.registry import register_dataset

MNIST_FILES = [
    RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
CIFAR_FILES = {
    10: RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    100: RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
# Per-channel statistics used by the papers' CIFAR pipelines (AdaBelief's, which PSGD follows).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# dataset.normalization: "adabelief" uses the above for CIFAR-10 and CIFAR-100; "per_dataset" uses each set's own
# statistics, as the LLQR code (SimonDufLab/LLQR lqr_optimizer/_src/utils/utils.py, prepare_dataloader).
CIFAR_STATS = {
    "adabelief": {10: (CIFAR_MEAN, CIFAR_STD), 100: (CIFAR_MEAN, CIFAR_STD)},
    "per_dataset": {
        10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    },
}


def _normalized(images, mean, std):
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (images - mean) / std


def random_crop_flip(pad=4, flip=True, cutout=0, padding="zeros", cutout_fill=0.0):
    """Augmentation of a batch: random crop after padding by `pad` on each side, horizontal flip, optional Cutout.

    `padding`: "zeros" (of the normalised images), or "reflect" (mirrored edge pixels, not repeating the edge) as the
    LLQR code's tf.pad(..., 'REFLECT'), which pads raw pixels: a per-channel affine normalisation commutes with it.
    Cutout with probability 0.5 sets the pixels within `cutout` // 2 of a uniformly drawn centre, clipped at the
    border, to `cutout_fill` (a number, or a per-channel (C, 1, 1) tensor): the LLQR code's `apply_cutout`
    (utils.py), which blacks out raw pixels before normalising. Its crop draws one offset for a whole batch
    (tf.image.random_crop over the batch tensor); here each image has its own, as usual.
    """
    if padding not in ("zeros", "reflect"):
        raise ValueError(f"dataset.padding={padding!r} is not known; choose 'zeros' or 'reflect'")
    mode = "constant" if padding == "zeros" else "reflect"

    def augment(images, generator):
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        if flip:
            mirror = torch.rand(n, generator=generator) < 0.5
            out[mirror] = out[mirror].flip(-1)
        if cutout:
            cy = torch.randint(0, h, (n,), generator=generator)
            cx = torch.randint(0, w, (n,), generator=generator)
            apply = torch.rand(n, generator=generator) < 0.5
            half = cutout // 2
            for i in torch.nonzero(apply).flatten().tolist():
                y, x = int(cy[i]), int(cx[i])
                out[i, :, max(y - half, 0) : y + half, max(x - half, 0) : x + half] = cutout_fill
        return out

    return augment


@register_dataset("digits")
def digits(paths, batch_size=64, seed=0, image_size=28, test_fraction=0.2):
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the package), resized to
    `image_size` so that LeNet-5 applies as on MNIST; a seeded train/test split."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(raw.target, dtype=torch.long)
    train, test = split_indices(len(labels), 1.0 - test_fraction, seed)
    data = ArrayDataset((images[train], labels[train]), (images[test], labels[test]), batch_size, seed)
    data.info = {"num_classes": 10, "in_channels": 1, "image_size": image_size}
    return data


def bernoulli_pixels(images, generator):
    """Each pixel (a probability in [0, 1]) replaced by a 0/1 draw: Li's mnist_logistic_regression.py resamples
    every training batch so (`data = torch.bernoulli(data)`; PSGD paper Fig. 6, "Bernoulli noise")."""
    return torch.bernoulli(images, generator=generator)


@register_dataset("mnist")
def mnist(paths, batch_size=64, seed=0, normalize=True, entropy_subsets=None, train_on="all", bernoulli_resample=False):
    """MNIST (LeCun's four files; read from the mirror, the cache or downloaded, each md5-checked).

    `entropy_subsets`: a file written by scripts/entropy_subsets.py (an oracle's lowest- and highest-entropy
    training points, PSGD paper Table 11). With it, `train_on` may be "low_entropy" or "high_entropy" (train on
    that subset only), and the run ends by recording the model's mean prediction entropy on both subsets.
    `bernoulli_resample`: binarise every training batch anew (bernoulli_pixels; the test set stays as it is)."""
    from torchvision.datasets import MNIST

    if bernoulli_resample and normalize:
        raise ValueError("dataset.bernoulli_resample=true needs pixels in [0, 1]: set dataset.normalize=false")
    if entropy_subsets is None and train_on != "all":
        raise ValueError(f"dataset.train_on={train_on!r} needs dataset.entropy_subsets (a file written by "
                         "scripts/entropy_subsets.py); or set dataset.train_on=all")
    if train_on not in ("all", *EntropySubsetsDataset.SUBSETS):
        raise ValueError(f"dataset.train_on={train_on!r} is invalid; choose all, low_entropy or high_entropy")
    files = [RemoteFile(f.name, f.md5, MNIST_URL + f.name) for f in MNIST_FILES]
    fetch_files("MNIST", paths, "MNIST/raw", files, mirror_subdir="mnist")
    splits = [MNIST(str(paths.root), train=train, download=True) for train in (True, False)]
    tensors = []
    for split in splits:
        images = split.data.unsqueeze(1).float() / 255.0
        if normalize:
            images = (images - 0.1307) / 0.3081
        tensors.append((images, split.targets.long()))
    augment = bernoulli_pixels if bernoulli_resample else None
    if entropy_subsets is None:
        data = ArrayDataset(tensors[0], tensors[1], batch_size, seed, augment=augment)
    else:
        data = EntropySubsetsDataset(tensors[0], tensors[1], batch_size, seed, entropy_subsets, train_on, augment=augment)
    data.info = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    return data


class EntropySubsetsDataset(ArrayDataset):
    """A training set restricted to an oracle's low- or high-entropy points (or all of it), which reports, at the
    end of a run, the model's mean prediction entropy on each of the two subsets (PSGD paper Table 11)."""

    SUBSETS = ("low_entropy", "high_entropy")

    def __init__(self, train, test, batch_size, seed, subsets_file, train_on, augment=None):
        self.full_train_x = train[0]
        self.subsets = load_entropy_subsets(subsets_file, len(train[0]))
        if train_on != "all":
            index = self.subsets[train_on]
            train = (train[0][index], train[1][index])
        super().__init__(train, test, batch_size, seed, augment=augment)

    def final_metrics(self, model, device):
        from harness.metrics import prediction_entropy

        return {f"entropy/{name}_subset": float(prediction_entropy(model, self.full_train_x[index], device).mean())
                for name, index in self.subsets.items()}


def load_entropy_subsets(path, train_size):
    """{"low_entropy": indices, "high_entropy": indices} from scripts/entropy_subsets.py's .npz, checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"dataset.entropy_subsets={str(path)!r} does not exist; write it with "
                                "`python -m scripts.entropy_subsets <oracle run dir> --out <file>.npz`")
    with np.load(path) as stored:
        missing = [name for name in EntropySubsetsDataset.SUBSETS if name not in stored]
        if missing:
            raise ValueError(f"{path} has no {', '.join(missing)} array (not written by scripts/entropy_subsets.py?)")
        subsets = {name: torch.as_tensor(stored[name], dtype=torch.long) for name in EntropySubsetsDataset.SUBSETS}
    for name, index in subsets.items():
        if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= train_size:
            raise ValueError(f"{path}: the {name} indices are empty or outside the {train_size} training points")
    return subsets


CIFAR_LAYOUT = {  # extracted folder, training batches, test batch, label key
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    100: ("cifar-100-python", ["train"], "test", b"fine_labels"),
}


def read_cifar_folder(folder, classes):
    """Read the CIFAR python-pickle batches of an extracted folder into (images, labels) tensors per split."""
    _, train_names, test_name, label_key = CIFAR_LAYOUT[classes]
    splits = []
    for names in (train_names, [test_name]):
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
            images.append(torch.from_numpy(np.asarray(batch[b"data"], dtype=np.uint8)).view(-1, 3, 32, 32))
            labels.append(torch.tensor(batch[label_key], dtype=torch.long))
        splits.append((torch.cat(images).float() / 255.0, torch.cat(labels)))
    return splits


def locate_cifar(paths, classes):
    """An extracted CIFAR folder: in the mirror or the cache, else extracted from the md5-checked archive."""
    folder_name = CIFAR_LAYOUT[classes][0]
    for base in [paths.mirror / f"cifar{classes}" if paths.mirror else None, paths.root]:
        if base is not None and (base / folder_name).is_dir():
            return base / folder_name
    remote = CIFAR_FILES[classes]
    directory = fetch_files(
        f"CIFAR-{classes}", paths, "", [remote], mirror_subdir=f"cifar{classes}",
        how_to=f"Download {remote.url} on a machine with network and copy it to {paths.root} (or its extracted {folder_name}/)",
    )
    with tarfile.open(directory / remote.name) as archive:
        archive.extractall(directory, filter="data")
    return directory / folder_name


def cifar_dataset(train, test, classes, batch_size, seed, augment, cutout, normalization="adabelief", padding="zeros",
                  cls=ArrayDataset, **extra):
    """A CIFAR dataset from raw [0, 1] (images, labels) splits: normalised with `normalization`'s statistics
    (CIFAR_STATS), the training split augmented by random_crop_flip (Cutout blacks out raw pixels)."""
    if normalization not in CIFAR_STATS:
        raise ValueError(f"dataset.normalization={normalization!r} is not known; choose one of {sorted(CIFAR_STATS)}")
    mean, std = CIFAR_STATS[normalization][classes]
    train, test = (_normalized(train[0], mean, std), train[1]), (_normalized(test[0], mean, std), test[1])
    black = _normalized(torch.zeros(1, 3, 1, 1), mean, std)[0]
    augmentation = random_crop_flip(cutout=cutout, padding=padding, cutout_fill=black) if augment else None
    data = cls(train, test, batch_size, seed, augment=augmentation, **extra)
    data.info = {"num_classes": classes, "in_channels": 3, "image_size": 32}
    return data


def _cifar(paths, classes, batch_size, seed, augment, cutout, normalization, padding, forgetting_stats,
           keep_most_forgettable):
    train, test = read_cifar_folder(locate_cifar(paths, classes), classes)
    if keep_most_forgettable is not None:
        train = most_forgettable_subset(train, forgetting_stats, keep_most_forgettable)
    return cifar_dataset(train, test, classes, batch_size, seed, augment, cutout, normalization, padding)


def most_forgettable_subset(train, forgetting_stats, keep):
    """The `keep` most forgettable (images, labels) of a training split, ranked by a run's example_stats.npz
    (trainer.example_stats; PSGD paper Table 7)."""
    from harness.example_stats import most_forgettable

    if forgetting_stats is None:
        raise ValueError(f"dataset.keep_most_forgettable={keep} needs dataset.forgetting_stats, the example_stats.npz "
                         "of a run trained with trainer.example_stats=true; or set dataset.keep_most_forgettable=null")
    index = most_forgettable(forgetting_stats, int(keep), len(train[1]))
    return train[0][index], train[1][index]


@register_dataset("cifar10")
def cifar10(paths, batch_size=128, seed=0, augment=True, cutout=0, normalization="adabelief", padding="zeros",
            forgetting_stats=None, keep_most_forgettable=None):
    """CIFAR-10 with the standard augmentation (random crop, padding 4, horizontal flip, normalisation); optionally
    only the `keep_most_forgettable` most forgettable training images of `forgetting_stats`."""
    return _cifar(paths, 10, batch_size, seed, augment, cutout, normalization, padding, forgetting_stats,
                  keep_most_forgettable)


@register_dataset("cifar100")
def cifar100(paths, batch_size=128, seed=0, augment=True, cutout=0, normalization="adabelief", padding="zeros",
             forgetting_stats=None, keep_most_forgettable=None):
    """CIFAR-100 with the standard augmentation (and the same optional pruning as cifar10)."""
    return _cifar(paths, 100, batch_size, seed, augment, cutout, normalization, padding, forgetting_stats,
                  keep_most_forgettable)
