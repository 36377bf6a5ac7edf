"""Dataset registry. Importing this package registers every dataset."""

from harness.data import synthetic, vision  # noqa: F401  (registration side effects)
from harness.data import text  # noqa: F401,E402  (registration: language modelling)
from harness.data import iwslt  # noqa: F401,E402  (registration: IWSLT14 translation)
from harness.data import cifar_variants, imagenet  # noqa: F401,E402  (registration: CIFAR variants, ImageNet)
from harness.data.base import LOSS_KINDS, ArrayDataset, Dataset, to_device
from harness.data.files import DataPaths
from harness.errors import ConfigError
from harness.registry import DATASETS, build_from_registry


def build_dataset(cfg, paths, seed):
    """Build the dataset named by `cfg.name`; `seed` is used unless the config pins `dataset.seed`."""
    cfg = dict(cfg)
    cfg.setdefault("seed", seed)
    try:
        return build_from_registry(DATASETS, "dataset", cfg, paths)
    except ValueError as error:
        raise ConfigError(str(error)) from error


__all__ = ["ArrayDataset", "DATASETS", "DataPaths", "Dataset", "LOSS_KINDS", "build_dataset", "to_device"]
