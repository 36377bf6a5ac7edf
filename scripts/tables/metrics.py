"""Turn a run's summary into the number a paper cell reports, and aggregate those numbers over seeds.

Metric kinds (the `metric:` entry of a table mapping):
  final         summary["final"][key] × factor          e.g. {kind: final, key: val/accuracy, factor: 100}
  best          summary["best"][key]["value"] × factor
  error_pct     (1 − final[key]) × 100, or of best[key] with `from: best`; key defaults to val/accuracy
  summary       summary[key] × factor                   e.g. {kind: summary, key: steps}
  perplexity    final["val/perplexity"], else exp(final["val/loss"])
  success_rate  1 when the run stopped at the target train loss (delayed XOR), else 0; aggregated as a fraction
  steps_to      first logged step where metrics.jsonl's `key` reaches `threshold` (needs metrics.jsonl beside
                the summary); runs that never reach it count as missing, and `note` says how many
Numbers print with `digits` decimals (default 2), or with `format`, a Python format spec such as ".1e".
"""

import json
import math
import statistics


def run_value(run, metric):
    """The run's value for this metric, or None when the summary lacks what the metric needs."""
    kind = metric["kind"]
    final = run.summary.get("final") or {}
    factor = metric.get("factor", 1.0)
    if kind == "final":
        value = final.get(metric["key"])
        return None if value is None else value * factor
    if kind == "best":
        value = _best(run, metric["key"])
        return None if value is None else value * factor
    if kind == "error_pct":
        key = metric.get("key", "val/accuracy")
        value = final.get(key) if metric.get("from", "final") == "final" else _best(run, key)
        return None if value is None else (1.0 - value) * 100.0
    if kind == "perplexity":
        if final.get("val/perplexity") is not None:
            return final["val/perplexity"]
        return None if final.get("val/loss") is None else math.exp(final["val/loss"])
    if kind == "summary":
        value = run.summary.get(metric["key"])
        return None if value is None else value * factor
    if kind == "success_rate":
        return None if run.summary.get("stopped") is None else float(run.summary["stopped"] == "target_train_loss")
    if kind == "steps_to":
        return _first_step_reaching(run.path / "metrics.jsonl", metric["key"], metric["threshold"])
    raise ValueError(f"unknown metric kind {kind!r}")


def _best(run, key):
    entry = (run.summary.get("best") or {}).get(key)
    return None if entry is None else entry["value"]


def _first_step_reaching(path, key, threshold):
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get(key) is not None and record[key] >= threshold:
            return float(record["step"])
    return None


def aggregate(values, metric):
    """{n, mean, std, text}: mean ± sample std over the runs that have a value (std shown as "–" for n = 1)."""
    values = [v for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "text": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else None
    digits = metric.get("digits", 2)
    if metric["kind"] == "success_rate":
        return {"n": n, "mean": mean, "std": std, "text": f"{mean:.{digits}f} ({round(mean * n)}/{n})"}
    spec = number_format(metric)
    spread = "–" if std is None else f"{std:{spec}}"
    return {"n": n, "mean": mean, "std": std, "text": f"{mean:{spec}} ± {spread}"}


def number_format(metric):
    """The format spec of a metric's numbers: its `format` (e.g. ".1e" for entropies near 1e-16), else `digits`
    decimals (default 2)."""
    return metric.get("format") or f".{metric.get('digits', 2)}f"


def describe(metric):
    """A short phrase for the table header."""
    if metric.get("text"):
        return metric["text"]
    kind, key = metric["kind"], metric.get("key")
    factor = f" × {metric['factor']:g}" if metric.get("factor", 1) != 1 else ""
    return {
        "final": f"final {key}{factor}, mean ± std over runs",
        "best": f"best {key}{factor} over evaluations, mean ± std over runs",
        "error_pct": f"(1 − {metric.get('from', 'final')} {key or 'val/accuracy'}) × 100, mean ± std over runs",
        "summary": f"summary {key}, mean ± std over runs",
        "perplexity": "final val/perplexity (exp of val/loss when absent), mean ± std over runs",
        "success_rate": "success rate = fraction of runs that stopped at the target train loss (successes/runs)",
        "steps_to": f"first logged step with {key} ≥ {metric.get('threshold')}, mean ± std over runs that reach it",
    }[kind]
