"""Submit a sweep defined in slurm/sweeps/NAME.yaml: one job per combination of its grid.

    python -m scripts.sweep psgd_table8 --dry-run          # print the jobs, submit nothing
    python -m scripts.sweep psgd_table8                     # submit to SLURM (submitit), print job ids
    python -m scripts.sweep demo_grid --executor local      # the same jobs on this machine

Values reach each job as Hydra override arguments (never through a shell). A grid axis lists plain values
(`optimizer: [sgd, adamw]` gives optimizer=sgd and optimizer=adamw) or bundles, mappings of overrides that go
together (`- {optimizer: psgd_lra, optimizer.rank: 5}`; the axis name is then only a label). Each job trains in its own
run directory `<runs>/<sweep>/<job>`; on preemption or time-out (SIGUSR2 from submitit, SIGTERM from
SLURM) the job checkpoints and requeues itself, and the requeued job resumes from that directory.
`python -m scripts.collect_runs` then copies finished summaries into results/runs/.
"""

import argparse
import itertools
import os
import shlex
from pathlib import Path

import submitit
import yaml

from harness.compose import REPO_ROOT
from harness.errors import ConfigError

SWEEPS = REPO_ROOT / "slurm" / "sweeps"
KEYS = {"description", "grid", "fixed", "resources"}
RESOURCE_KEYS = {"timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node"}


def load_sweep(name):
    """Read and validate slurm/sweeps/<name>.yaml (or a sweep file's path); errors name the file and the key."""
    name = str(name)
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no sweep {name!r}: {path} does not exist; choose one of {sorted(p.stem for p in SWEEPS.glob('*.yaml'))}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {sorted(KEYS)}")
    for key in spec:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}; the keys are {sorted(KEYS)}")
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: 'grid' must map override keys to non-empty lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values or any(isinstance(v, list) for v in values):
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of plain values (or of bundles: mappings "
                              "from override keys to plain values)")
        for index, value in enumerate(values):
            if isinstance(value, dict) and (not value or not all(_plain(v) for v in value.values())):
                raise ConfigError(f"{path}: grid.{key}[{index}] is a bundle and must map override keys to plain values "
                                  "or lists of plain values")
    for section in ("fixed", "resources"):
        if not isinstance(spec.get(section) or {}, dict):
            raise ConfigError(f"{path}: '{section}' must be a mapping")
    for key in spec.get("resources") or {}:
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{path}: unknown key resources.{key}; the keys are {sorted(RESOURCE_KEYS)}")
    _check_jobs(path, spec)
    return spec


def _check_jobs(path, spec):
    """Every job sets each key once, and no two jobs share a name (they would share a run directory)."""
    names = set()
    for name, overrides in jobs_of(spec):
        keys = [override.split("=", 1)[0] for override in overrides]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ConfigError(f"{path}: job {name} sets {', '.join(twice)} more than once (grid, bundles and fixed overlap)")
        if name in names:
            raise ConfigError(f"{path}: two jobs are named {name}")
        if len(name.encode()) > 255:
            raise ConfigError(f"{path}: job name {name} is longer than 255 bytes (a run directory's limit); shorten the grid")
        names.add(name)


def _plain(value):
    return not isinstance(value, (dict, list)) or (isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value))


def _value(value):
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _override(key, value):
    """`key=value`; a key starting with "~" and the value null is Hydra's deletion `~key`."""
    return key if key.startswith("~") and value is None else f"{key}={_value(value)}"


def _overrides(key, value):
    """A plain grid value sets its key; a bundle (a mapping) sets all its overrides together, its key is a label."""
    if isinstance(value, dict):
        return [_override(k, v) for k, v in value.items()]
    return [_override(key, value)]


def _labels(key, values):
    """Each grid value's part of a job name: its overrides; for a bundle only its group choices (keys without a dot,
    e.g. experiment=..., optimizer=...) when those tell the axis's bundles apart, so that names stay short."""
    full = [_overrides(key, v) for v in values]
    short = [[o for o in overrides if "." not in o.split("=", 1)[0]] for overrides in full]
    distinct = all(short) and len({tuple(s) for s in short}) == len(short)
    return [",".join(o.replace("/", "_") for o in (s if distinct and isinstance(v, dict) else f))
            for v, s, f in zip(values, short, full)]


def jobs_of(spec):
    """(job name, Hydra overrides) for every combination of the grid, fixed overrides last."""
    keys = list(spec["grid"])
    fixed = [_override(k, v) for k, v in (spec.get("fixed") or {}).items()]
    axes = [list(zip(spec["grid"][k], _labels(k, spec["grid"][k]))) for k in keys]
    for combination in itertools.product(*axes):
        overrides = [o for k, (v, _) in zip(keys, combination) for o in _overrides(k, v)]
        yield ",".join(label for _, label in combination), overrides + fixed


class TrainJob(submitit.helpers.Checkpointable):
    """One run of the sweep, in-process. submitit calls `checkpoint` on preemption and requeues the job;
    the training loop has written its checkpoint by then, so the requeued call resumes."""

    def __call__(self, overrides, run_dir):
        from harness.compose import run_config

        os.chdir(REPO_ROOT)
        return run_config(overrides, run_dir)[1]


def make_executor(kind, folder, resources, partition, account):
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    parameters = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1, **resources}
    if kind == "slurm":
        parameters["slurm_partition"] = partition or os.environ.get("SLURM_PARTITION")
        if account or os.environ.get("SLURM_ACCOUNT"):
            parameters["slurm_account"] = account or os.environ.get("SLURM_ACCOUNT")
        parameters = {k: v for k, v in parameters.items() if v is not None}
    executor.update_parameters(**parameters)
    return executor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a name in slurm/sweeps (psgd_table1) or the path of a sweep file")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and submit nothing")
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    parser.add_argument("--runs", default="outputs/sweeps", help="where run directories go")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--wait", action="store_true", help="wait for the jobs and report their status")
    args = parser.parse_args(argv)
    spec = load_sweep(args.sweep)
    jobs = list(jobs_of(spec))
    sweep_name = Path(args.sweep).stem  # a name, or a path to a sweep file
    root = Path(args.runs).resolve() / sweep_name
    print(f"sweep {sweep_name}: {len(jobs)} jobs; run directories under {root}")
    if args.dry_run:
        for name, overrides in jobs:
            print("  python train.py " + " ".join(map(shlex.quote, [*overrides, f'hydra.run.dir="{root / name}"'])))
        return []
    executor = make_executor(args.executor, root / ".submitit" / "%j", spec.get("resources") or {}, args.partition, args.account)
    submitted = []
    with executor.batch():
        for name, overrides in jobs:
            submitted.append((name, executor.submit(TrainJob(), overrides, str(root / name))))
    for name, job in submitted:
        print(f"  job {job.job_id}: {name}")
    print(f"collect finished runs with: python -m scripts.collect_runs {root}")
    if args.wait:
        for name, job in submitted:
            job.result()
            print(f"  done: {name}")
    return submitted


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        raise SystemExit(f"error: {error}")
