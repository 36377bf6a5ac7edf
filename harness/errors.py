"""Errors the user can fix. `train.py` prints their message on one line and exits with status 2."""


class UserError(Exception):
    """Base class: a problem in the user's input, reported without a traceback."""


class ConfigError(UserError):
    """An invalid config value. The message names the key, the value and what is allowed."""


class UnsupportedLossError(ConfigError):
    """The optimizer needs the output curvature of a loss kind the model's loss is not (its `supported_losses`)."""


class DataNotFoundError(UserError):
    """A dataset is not on disk and cannot be downloaded. The message says where we looked and how to fix it."""


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite. The message gives the step and the last good checkpoint."""
