"""Synthetic stand-ins in the real on-disk formats: CIFAR python-pickle folders and ImageFolder trees.

Images are a per-class colour template plus noise, so that a model can learn them in a few steps.
"""

import pickle

import numpy as np

CIFAR_TRAIN = {10: [f"data_batch_{i}" for i in range(1, 6)], 100: ["train"]}
CIFAR_TEST = {10: "test_batch", 100: "test"}
CIFAR_FOLDER = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def class_images(labels, rng, side=32):
    """uint8 images (n, 3, side, side): class c has a fixed random template, plus uniform noise."""
    templates = np.random.default_rng(1234).integers(0, 256, (max(labels) + 1, 3, side, side))
    noise = rng.integers(-40, 41, (len(labels), 3, side, side))
    return np.clip(templates[np.asarray(labels)] + noise, 0, 255).astype(np.uint8)


def write_cifar_folder(root, classes=10, per_class=20, test_per_class=4, seed=0):
    """An extracted CIFAR folder under `root` with `per_class` training images per class (labels balanced)."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER[classes]
    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if classes == 10 else b"fine_labels"
    train_labels = rng.permutation(np.repeat(np.arange(classes), per_class)).tolist()
    names = CIFAR_TRAIN[classes]
    chunks = np.array_split(np.arange(len(train_labels)), len(names))
    for name, chunk in zip(names, chunks):
        labels = [train_labels[i] for i in chunk]
        batch = {b"data": class_images(labels, rng).reshape(len(labels), -1), key: labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    test_labels = np.repeat(np.arange(classes), test_per_class).tolist()
    (folder / CIFAR_TEST[classes]).write_bytes(pickle.dumps({b"data": class_images(test_labels, rng).reshape(len(test_labels), -1), key: test_labels}))
    return folder


def write_image_folder(root, classes=3, per_class=6, side=40, seed=0):
    """An ImageFolder tree root/{train,val}/<class>/*.png of RGB images (`side`×`side+8`, not square on purpose)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = class_images([c], rng, side=side + 8)[0][:, :side, :].transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"img_{k}.png")
    return root


def write_ntga_folder(folder, train=20, test=40, seed=0):
    """The four .npy files of the NTGA release (PSGD Table 3 'Adversarial') in its format: HWC float images in
    [0, 1] and one-hot labels; `train` clean images (x_val) and `test` "attacked" ones (x_train)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, images_name in (("val", train, "x_val_cifar10.npy"), ("train", test, "x_train_cifar10_ntga_cnn_best.npy")):
        labels = np.arange(count) % 10
        images = class_images(labels.tolist(), rng).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        np.save(folder / images_name, images)
        np.save(folder / f"y_{prefix}_cifar10.npy", np.eye(10, dtype=np.float32)[labels])
    return folder
