"""Load the runs that `scripts/collect_runs.py` copied into results/runs/, and select the runs of a table cell."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MISSING = object()


@dataclass
class Run:
    path: Path                      # results/runs/<experiment>/<run>/
    summary: dict
    config: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.path.parent.name}/{self.path.name}"


def load_runs(runs_dir):
    """Every results/runs/**/summary.json with its config.yaml (an empty dict when absent). No dir: no runs."""
    runs = []
    for summary_path in sorted(Path(runs_dir).rglob("summary.json")):
        config_path = summary_path.parent / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        runs.append(Run(summary_path.parent, json.loads(summary_path.read_text()), config or {}))
    return runs


def lookup(tree, dotted):
    """tree["a"]["b"] for "a.b"; keys may contain "/" (metric names) but not "."; MISSING when absent."""
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def same_value(actual, wanted):
    """Config values compare numerically when both are numbers (32 == 32.0, "1e-2" == 0.01), else as strings."""
    a, w = _as_number(actual), _as_number(wanted)
    if a is not None and w is not None:
        return math.isclose(a, w, rel_tol=1e-9, abs_tol=0.0)
    return str(actual).lower() == str(wanted).lower()


def _as_number(value):
    if isinstance(value, bool) or value is None or value is MISSING:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _matches(actual, wanted):
    options = wanted if isinstance(wanted, list) else [wanted]
    return actual is not MISSING and any(same_value(actual, option) for option in options)


def select(runs, selector):
    """The runs a cell's selector picks. Selector keys (all must hold; a list value means "any of"):
    experiment: the summary's experiment name; choices: {group: option} (the Hydra group choices);
    config: {dotted.key: value} in config.yaml; summary: {dotted.key: value} in summary.json."""
    return [run for run in runs if all(_matches(actual, wanted) for actual, wanted in _pairs(run, selector))]


def _pairs(run, selector):
    """(value in the run, wanted value) for every condition of the selector."""
    pairs = [(run.summary.get("experiment", MISSING), selector["experiment"])] if "experiment" in selector else []
    pairs += [(lookup(run.summary, f"choices.{k}"), v) for k, v in selector.get("choices", {}).items()]
    pairs += [(lookup(run.config, k), v) for k, v in selector.get("config", {}).items()]
    pairs += [(lookup(run.summary, k), v) for k, v in selector.get("summary", {}).items()]
    return pairs
