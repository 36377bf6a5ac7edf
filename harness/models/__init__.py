"""Model registry. Importing this package registers every model."""

from harness.errors import ConfigError
from harness.models import resnet, small  # noqa: F401  (registration side effects)
from harness.registry import MODELS, build_from_registry


def build_model(cfg, info):
    """Build the model named by `cfg.name` for a dataset described by `info` (classes, input shape, ...)."""
    try:
        return build_from_registry(MODELS, "model", cfg, info)
    except (ValueError, KeyError) as error:
        message = f"model {cfg.get('name')!r} does not fit this dataset (it lacks {error})" if isinstance(error, KeyError) else str(error)
        raise ConfigError(message) from error


__all__ = ["MODELS", "build_model"]
