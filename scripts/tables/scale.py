"""Full or reduced scale: compare each run's resolved config with the paper's setting declared in the mapping
(`paper_setting: {dotted.config.key: paper value}`); every key where a run differs is a reduction."""

from .runs import MISSING, lookup, same_value


def scale_text(runs, paper_setting):
    """"full" when every run matches the paper's setting on every declared key; else "reduced: key=ours (paper P)"
    for each differing key (all distinct values the runs used). "unknown" when no key could be read from a config."""
    if not runs:
        return ""
    if not paper_setting:
        return "not declared"
    reductions, readable = [], False
    for key, paper in paper_setting.items():
        ours = [lookup(run.config, key) for run in runs]
        readable = readable or any(value is not MISSING for value in ours)
        differing = sorted({_show(v) for v in ours if v is not MISSING and not same_value(v, paper)})
        if differing:
            reductions.append(f"{key}={'/'.join(differing)} (paper {_show(paper)})")
    if reductions:
        return "reduced: " + "; ".join(reductions)
    return "full" if readable else "unknown (no config.yaml)"


def _show(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "null" if value is None else str(value)
