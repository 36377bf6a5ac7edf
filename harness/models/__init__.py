"""Model registry. Importing this package registers every model."""

from harness.errors import ConfigError
from harness.models import resnet, small  # noqa: F401  (registration side effects)
from harness.models import nanogpt  # noqa: F401,E402  (registration: GPT-2 style decoders)
from harness.models import lstm_lm  # noqa: F401,E402  (registration: PTB LSTM language models)
from harness.models import grokking  # noqa: F401,E402  (registration: grokking transformer)
from harness.models import transformer  # noqa: F401,E402  (registration: IWSLT encoder-decoder)
from harness.models import imagenet, vgg, wide_resnet  # noqa: F401,E402  (registration: CIFAR/ImageNet CNNs, ViT)
from harness.registry import MODELS, build_from_registry


def build_model(cfg, info):
    """Build the model named by `cfg.name` for a dataset described by `info` (classes, input shape, ...)."""
    try:
        return build_from_registry(MODELS, "model", cfg, info)
    except (ValueError, KeyError) as error:
        message = f"model {cfg.get('name')!r} does not fit this dataset (it lacks {error})" if isinstance(error, KeyError) else str(error)
        raise ConfigError(message) from error


__all__ = ["MODELS", "build_model"]
