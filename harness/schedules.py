"""Learning-rate schedules: a multiplier of the initial step size as a function of training progress.

Each schedule config has `name`, `interval` ("step": progress counted in steps, or "epoch": the multiplier
changes once per epoch, as the papers' CIFAR and MNIST scripts do) and the schedule's own keys.
`also` maps other param-group keys (for example PSGD's `lr_preconditioner`) to schedule configs of their own.
With interval "epoch" a schedule sees whole epochs, except those in FRACTIONAL_EPOCH, which see the fractional
epoch step / steps_per_epoch (stage: its milestones act at whole epochs, its warm-up rises every step).
"""

import math

from harness.errors import ConfigError


def constant(t, total):
    return 1.0


def cosine(t, total, final_factor=0.0):
    """Cosine annealing from 1 to `final_factor` over the run (PSGD E.2: lr0·(1 + cos(π·epoch/T))/2)."""
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * min(t / total, 1.0)))


def stage(t, total, milestones=(0.7, 0.9), gamma=0.1, warmup=0, start_factor=0.0):
    """Multiply by `gamma` at each milestone; milestones below 1 are fractions of the run, others are counts.
    An optional linear warm-up from `start_factor` over `warmup` (a fraction of the run below 1, else a count) comes
    first: Goyal et al. 2017's ResNet-50 recipe, llqr_spec.md §8.4 (5 % of the run, then ×0.1 at epochs 30/70/90)."""
    whole = math.floor(t)
    passed = sum(whole >= (m * total if m < 1 else m) for m in milestones)
    warm = warmup * total if warmup < 1 else warmup
    ramp = start_factor + (1.0 - start_factor) * t / warm if t < warm else 1.0
    return ramp * gamma**passed


def exponential(t, total, final_factor=0.01):
    """Geometric decay from 1 to `final_factor` at the last step/epoch (PSGD LeNet-5: 0.1 → 0.001 over 10 epochs)."""
    return final_factor ** (t / max(total - 1, 1))


def warmup_cosine(t, total, warmup=0.05, start_factor=0.0, final_factor=0.0):
    """Linear warm-up from `start_factor` over `warmup` (a fraction below 1, else a count), then cosine."""
    warm = warmup * total if warmup < 1 else warmup
    if t < warm:
        return start_factor + (1.0 - start_factor) * t / warm
    return cosine(t - warm, max(total - warm, 1), final_factor)


def inverse_sqrt(t, total, warmup=4000, start_factor=0.0):
    """fairseq's inverse_sqrt: linear warm-up over `warmup` steps, then sqrt(warmup / t)."""
    if t < warmup:
        return start_factor + (1.0 - start_factor) * t / warmup
    return math.sqrt(warmup / max(t, 1))


SCHEDULES = {f.__name__: f for f in (constant, cosine, stage, exponential, warmup_cosine, inverse_sqrt)}
FRACTIONAL_EPOCH = {"stage"}


class Schedule:
    """Sets each param group's `key` to `initial_<key>` × multiplier before every step."""

    def __init__(self, cfg, total_steps, steps_per_epoch, key="lr", group="schedule"):
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        if name not in SCHEDULES:
            raise ConfigError(f"{group}.name={name!r} is not a schedule; choose one of {sorted(SCHEDULES)}")
        self.interval = cfg.pop("interval", "step")
        if self.interval not in ("step", "epoch"):
            raise ConfigError(f"{group}.interval={self.interval!r} is invalid; choose 'step' or 'epoch'")
        if self.interval == "epoch" and not steps_per_epoch:
            raise ConfigError(f"{group}.interval='epoch' needs a dataset with epochs; use 'step' for streams")
        also = cfg.pop("also", None) or {}
        self.function, self.kwargs, self.key = SCHEDULES[name], cfg, key
        self.fractional = name in FRACTIONAL_EPOCH
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        try:
            self.multiplier(0)
        except TypeError as error:
            raise ConfigError(f"{group}: {error}") from error
        self.others = [Schedule(c, total_steps, steps_per_epoch, k, f"{group}.also.{k}") for k, c in also.items()]

    def multiplier(self, step):
        if self.interval == "epoch":
            epoch = step / self.steps_per_epoch if self.fractional else step // self.steps_per_epoch
            return self.function(epoch, math.ceil(self.total_steps / self.steps_per_epoch), **self.kwargs)
        return self.function(step, self.total_steps, **self.kwargs)

    def attach(self, optimizer):
        """Record `initial_<key>` in each param group (kept when resuming from a checkpoint)."""
        for group in optimizer.param_groups:
            if self.key not in group:
                raise ConfigError(f"the optimizer has no param-group key {self.key!r} for the schedule to set")
            group.setdefault(f"initial_{self.key}", group[self.key])
        for other in self.others:
            other.attach(optimizer)

    def apply(self, optimizer, step):
        factor = self.multiplier(step)
        for group in optimizer.param_groups:
            group[self.key] = group[f"initial_{self.key}"] * factor
        for other in self.others:
            other.apply(optimizer, step)
