"""Copy each finished run's summary.json and resolved config.yaml into results/runs/<experiment>/<run>/,
which is all `make tables` reads.

    python -m scripts.collect_runs outputs/sweeps/psgd_table8 [more run roots...] [--dest results/runs] [--with-metrics]

--with-metrics also copies metrics.jsonl, which curve figures and the `steps_to` metric (e.g. grokking) read.
Each run also gets command.txt: the `python train.py ...` command that made it, rebuilt from Hydra's record of the
run's overrides (.hydra/overrides.yaml; the run directory itself is not part of it).
"""

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import yaml


def collect(roots, destination, with_metrics=False):
    """Copy every finished run under `roots`; two runs that would land in the same folder are refused (nothing
    is copied) with both names, so that no run silently replaces another."""
    runs, sources = [], {}
    for root in roots:
        for summary_path in sorted(Path(root).rglob("summary.json")):
            summary = json.loads(summary_path.read_text())
            target = Path(destination) / (summary.get("experiment") or "unnamed") / summary_path.parent.name
            if target in sources:
                raise ValueError(f"two runs would both be copied to {target}: {sources[target]} and "
                                 f"{summary_path.parent}; rename one of the run directories")
            sources[target] = summary_path.parent
            runs.append((summary_path, target))
    copied = []
    for summary_path, target in runs:
        run_dir = summary_path.parent
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary_path, target / "summary.json")
        for name in ("config.yaml", "metrics.jsonl") if with_metrics else ("config.yaml",):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, target / name)
        command = train_command(run_dir)
        if command:
            (target / "command.txt").write_text(command + "\n")
        copied.append(target)
    return copied


def train_command(run_dir):
    """`python train.py <overrides>` from the run's .hydra/overrides.yaml, each override shell-quoted; None if absent."""
    recorded = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        return None
    return " ".join(["python", "train.py", *(shlex.quote(o) for o in yaml.safe_load(recorded.read_text()) or [])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--dest", default="results/runs")
    parser.add_argument("--with-metrics", action="store_true", help="also copy metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        copied = collect(args.roots, args.dest, args.with_metrics)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"copied {len(copied)} run summaries into {args.dest}")


if __name__ == "__main__":
    sys.exit(main())
