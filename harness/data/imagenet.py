"""ImageNet (or any ImageFolder tree) with the standard transforms, deterministic in (seed, step).

Expects `<data_dir>/train/<class>/*.JPEG` and `<data_dir>/val/<class>/*.JPEG` (the usual layout after running the
valprep script). Training: RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip,
normalisation; evaluation: resize the short side to image_size/0.875 (256 for 224), center crop. `crop="squash"` is
the LLQR code's pipeline instead (`squashed`). Crop parameters come from a generator seeded by (seed, step, position),
so a batch is a function of its step; images are decoded by a pool of `workers` threads.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from harness.data.base import Dataset
from harness.errors import DataNotFoundError
from harness.registry import register_dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROPS = ("inception", "squash")


def squashed(image, side):
    """The whole PIL image resized to side×side (aspect ratio not kept) as a [0, 1] tensor, with tf.image.resize's
    defaults (bilinear, half-pixel centres, no antialiasing). The LLQR code (SimonDufLab/LLQR
    lqr_optimizer/_src/utils/utils.py, resize_imgnet_dataset and the two functions after it) squashes training images
    to 480 or 256 (even odds), then takes a random 224 crop and a random flip; evaluation images to 256, then the
    central 224. Other image sizes scale these sides by image_size/224."""
    import torchvision.transforms.functional as TF

    return TF.resize(TF.to_tensor(image), [side, side], antialias=False)


def random_resized_crop_box(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params with a NumPy generator: (top, left, h, w)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the whole image, clamped to the ratio range (torchvision's)
    w, h = (width, int(round(width / ratio[0]))) if in_ratio < ratio[0] else (
        (int(round(height * ratio[1])), height) if in_ratio > ratio[1] else (width, height))
    h, w = min(h, height), min(w, width)
    return (height - h) // 2, (width - w) // 2, h, w


class ImageFolderDataset(Dataset):
    loss = "cross_entropy"
    metrics = ("accuracy",)

    def __init__(self, root, batch_size, seed, image_size=224, eval_batch_size=None, workers=8, max_eval_images=None,
                 crop="inception"):
        from torchvision.datasets import ImageFolder

        if crop not in CROPS:
            raise ValueError(f"dataset.crop={crop!r} is not known; choose one of {CROPS}")
        self.crop, self.eval_side = crop, int(round(image_size / 0.875))
        self.train_set, self.val_set = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
        self.batch_size, self.seed, self.image_size = int(batch_size), int(seed), int(image_size)
        self.eval_batch_size, self.workers, self.max_eval_images = int(eval_batch_size or batch_size), int(workers), max_eval_images
        self.steps_per_epoch = len(self.train_set) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the training set ({len(self.train_set)} images)")
        self.info = {"num_classes": len(self.train_set.classes), "in_channels": 3, "image_size": self.image_size}
        self._epoch, self._order = None, None

    def _train_image(self, index, rng):
        import torchvision.transforms.functional as TF

        image, size = self.train_set.loader(self.train_set.samples[index][0]).convert("RGB"), self.image_size
        if self.crop == "squash":
            side = int(round(size * 480 / 224)) if rng.uniform() < 0.5 else self.eval_side
            top, left = (int(v) for v in rng.integers(0, side - size + 1, 2))
            image = squashed(image, side)[:, top : top + size, left : left + size]
        else:
            top, left, h, w = random_resized_crop_box(image.width, image.height, rng)
            image = TF.to_tensor(TF.resized_crop(image, top, left, h, w, [size, size], antialias=True))
        if rng.uniform() < 0.5:
            image = TF.hflip(image)
        return TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)

    def _eval_image(self, index):
        import torchvision.transforms.functional as TF

        image = self.val_set.loader(self.val_set.samples[index][0]).convert("RGB")
        if self.crop == "squash":
            image = squashed(image, self.eval_side)
        else:
            image = TF.to_tensor(TF.resize(image, self.eval_side, antialias=True))
        return TF.normalize(TF.center_crop(image, [self.image_size] * 2), IMAGENET_MEAN, IMAGENET_STD)

    def _load(self, indices, seeds):
        rngs = [np.random.default_rng(s) for s in seeds]
        with ThreadPoolExecutor(max(self.workers, 1)) as pool:
            images = list(pool.map(self._train_image, indices, rngs))
        targets = torch.tensor([self.train_set.targets[i] for i in indices])
        return torch.stack(images), targets

    def train_batch(self, step):
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.train_set), generator=generator)
        indices = self._order[position * self.batch_size : (position + 1) * self.batch_size].tolist()
        return self._load(indices, [[self.seed, step, k] for k in range(len(indices))])

    def sample_batch(self, batch_size, generator):
        indices = torch.randint(len(self.train_set), (batch_size,), generator=generator).tolist()
        seeds = torch.randint(2**62, (batch_size,), generator=generator).tolist()
        return self._load(indices, seeds)

    def eval_batches(self):
        count = min(len(self.val_set), self.max_eval_images or len(self.val_set))
        with ThreadPoolExecutor(max(self.workers, 1)) as pool:
            for start in range(0, count, self.eval_batch_size):
                indices = list(range(start, min(start + self.eval_batch_size, count)))
                images = torch.stack(list(pool.map(self._eval_image, indices)))
                yield images, torch.tensor([self.val_set.targets[i] for i in indices])


@register_dataset("imagenet")
def imagenet(paths, batch_size=256, seed=0, data_dir=None, image_size=224, eval_batch_size=None, workers=8, max_eval_images=None,
             label_smoothing=0.0, crop="inception"):
    """ImageNet-1k from an ImageFolder tree: `data_dir`, else `<mirror>/imagenet`, else `<root>/imagenet`.
    `label_smoothing` is applied to the training loss by the loop (harness.protocol.loss_function)."""
    candidates = [Path(data_dir).expanduser()] if data_dir else []
    candidates += [p / "imagenet" for p in (paths.mirror, paths.root) if p is not None]
    for root in candidates:
        if (root / "train").is_dir() and (root / "val").is_dir():
            data = ImageFolderDataset(root, batch_size, seed, image_size, eval_batch_size, workers, max_eval_images, crop)
            data.label_smoothing = float(label_smoothing)
            return data
    raise DataNotFoundError(
        f"ImageNet: no train/ and val/ ImageFolder directories in {', '.join(map(str, candidates))}. ImageNet cannot be "
        "downloaded automatically (it needs an image-net.org account): extract ILSVRC2012 train and val into "
        "<dir>/train/<wnid>/ and <dir>/val/<wnid>/ and set dataset.data_dir=<dir>."
    )
