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


def scale_groups(runs, paper_setting):
    """The runs split by the values they use for the paper-setting keys (a 2-epoch run is never averaged with a
    20-epoch one): the group at the paper's setting first, then the others in order of their values."""
    groups = {}
    for run in runs:
        values = (lookup(run.config, key) for key in paper_setting or {})
        groups.setdefault(tuple("?" if v is MISSING else _show(v) for v in values), []).append(run)
    return [groups[key] for key in sorted(groups, key=lambda k: (scale_text(groups[k], paper_setting) != "full", k))]


def _show(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "null" if value is None else str(value)
