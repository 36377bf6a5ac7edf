"""Registries of models and datasets, filled by `@register_model` / `@register_dataset` decorators.

A config selects an entry by `name`; every other key of the config group is passed as a keyword argument,
so a misspelt key is reported with the config group and the accepted keys.
"""

import inspect

from harness.errors import ConfigError

MODELS = {}
DATASETS = {}


def register_model(name):
    def decorator(builder):
        MODELS[name] = builder
        return builder

    return decorator


def register_dataset(name):
    def decorator(builder):
        DATASETS[name] = builder
        return builder

    return decorator


def build_from_registry(registry, group, cfg, *args):
    """Call the builder registered under `cfg["name"]` with `*args` and the other keys of `cfg`."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in registry:
        raise ConfigError(f"{group}.name={name!r} is not known; choose one of {sorted(registry)}")
    builder = registry[name]
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in cfg if key not in accepted and not takes_any]
    if unknown:
        allowed = [k for k, p in accepted.items() if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty]
        raise ConfigError(f"{group}.{unknown[0]} is not an option of {group} {name!r}; its options are {allowed}")
    return builder(*args, **cfg)
