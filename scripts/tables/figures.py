"""Figures with matplotlib (Agg): ours vs the paper for success-rate tables, and training curves from metrics.jsonl."""

from collections import Counter
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from .build import NO_RUNS  # noqa: E402


def success_rate_figure(path, spec, frame):
    """Grouped bars per cell with runs: our success rate and the paper's. Returns False when no cell has runs."""
    rows = frame[frame["ours (mean ± std)"] != NO_RUNS]
    if rows.empty:
        return False
    header = rows.columns[0]  # the paper's row header, e.g. "Length" or "rank"
    labels = [f"{header} {row}, {column}" for row, column in zip(rows.iloc[:, 0], rows["column"])]
    repeated = {label for label, count in Counter(labels).items() if count > 1}  # a cell run at several scales
    labels = [f"{label} [{_short_scale(scale)}]" if label in repeated else label
              for label, scale in zip(labels, rows["scale"])]
    ours = [float(text.split(" ")[0]) for text in rows["ours (mean ± std)"]]
    paper = [_number(text) for text in rows["paper"]]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.5 * len(labels) + 2), 3.5))
    positions = range(len(labels))
    axes.bar([p - 0.2 for p in positions], ours, width=0.4, label="ours")
    axes.bar([p + 0.2 for p in positions], paper, width=0.4, label="paper")
    axes.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("success rate")
    axes.set_title("\n".join(textwrap.wrap(spec.title, 70)), fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _short_scale(scale):
    """"reduced: trainer.max_steps=3000 (paper 100000)" -> "trainer.max_steps=3000"."""
    return scale.removeprefix("reduced: ").split(" (paper")[0]


def _number(text):
    try:
        return float(text.split(" ")[0])
    except ValueError:
        return float("nan")  # "? (unknown)": no bar


def curves_figure(path, run_dirs):
    """train/loss (left) and val/accuracy (right; val/loss when no run logs an accuracy) against step, one line per
    run directory. The seeds of one optimizer share a colour and a legend entry; when the runs come from several
    experiments, the entry names the experiment too."""
    figure, (loss_axes, val_axes) = plt.subplots(1, 2, figsize=(9, 3.5))
    runs = []
    for run_dir in map(Path, run_dirs):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        runs.append((records, summary, run_dir))
    several_experiments = len({summary.get("experiment") for _, summary, _ in runs}) > 1
    groups = [_curve_group(summary, run_dir, several_experiments) for _, summary, run_dir in runs]
    colours = {group: f"C{i % 10}" for i, group in enumerate(dict.fromkeys(groups))}
    logs_accuracy = any(r.get("val/accuracy") is not None for records, _, _ in runs for r in records)
    val_key = "val/accuracy" if logs_accuracy else "val/loss"
    runs_per_group = Counter(groups)
    for (records, _, _), group in zip(runs, groups):
        label = f"{group} ({runs_per_group[group]} runs)" if runs_per_group[group] > 1 else group
        for axes, key in ((loss_axes, "train/loss"), (val_axes, val_key)):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                labelled = label not in axes.get_legend_handles_labels()[1]
                axes.plot(*zip(*points), marker=".", color=colours[group], label=label if labelled else None)
    loss_axes.set(xlabel="step", ylabel="train/loss", yscale="log")
    val_axes.set(xlabel="step", ylabel=val_key)
    loss_axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _curve_group(summary, run_dir, with_experiment):
    """The legend entry of a run: its optimizer (and experiment), or its directory name when it has no summary."""
    name = (summary.get("choices") or {}).get("optimizer", run_dir.name)
    return f"{name} [{summary.get('experiment')}]" if with_experiment else name
