"""What `train.py` runs: a task is a function `run(cfg, run_dir) -> summary dict`.

"supervised" is the one training loop (harness.loop.train). Other tasks (reinforcement learning) reuse
its pieces (the optimizer protocol, checkpoints, loggers) and register themselves here.
"""

from harness.errors import ConfigError
from harness.run_info import git_state

TASKS = {}


def register_task(name):
    def decorator(function):
        TASKS[name] = function
        return function

    return decorator


def run_task(cfg, run_dir):
    from harness import loop  # noqa: F401  (registers "supervised")
    from harness.rl import task  # noqa: F401  (registers "ppo")

    git_state()  # record the checkout's state now, as the run starts (its summary reports it)
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is not known; choose one of {sorted(TASKS)}")
    return TASKS[name](cfg, run_dir)
