"""One table's rows: for each paper cell, our aggregate over the selected runs beside the paper's number."""

import pandas as pd

from .metrics import aggregate, number_format, run_value
from .paper import UNKNOWN, paper_cell
from .runs import select
from .scale import scale_groups, scale_text

NO_RUNS = "no runs"
UNKNOWN_PAPER = "? (unknown)"
COLUMNS = ["column", "ours (mean ± std)", "n", "paper", "ours − paper", "scale", "note"]


def build_table(spec, runs):
    """A DataFrame with one line per cell and scale (runs at different scales are not averaged together), in the
    mapping's order, and the number of distinct runs used."""
    lines, used = [], set()
    for cell in spec.cells:
        picked = [] if cell.not_reproduced else select(runs, cell.select)
        used.update(run.name for run in picked)
        for group in scale_groups(picked, cell.paper_setting) or [[]]:
            lines.append(_line(spec, cell, group))
    frame = pd.DataFrame(lines, columns=[_row_header(spec)] + COLUMNS)
    return frame, len(used)


def _row_header(spec):
    return spec.paper.index.name or "row"


def _line(spec, cell, picked):
    result = aggregate([run_value(run, cell.metric) for run in picked], cell.metric)
    paper = paper_cell(spec.paper, cell.row, cell.paper_column)
    paper_std = paper_cell(spec.paper, *cell.paper_std_at) if cell.paper_std_at else None
    notes = list(cell.notes)
    if cell.not_reproduced:
        notes.insert(0, f"not reproduced: {cell.not_reproduced}")
    if picked and result["n"] < len(picked):
        notes.append(f"{len(picked) - result['n']} of {len(picked)} runs lack the metric")
    seeds = [run.summary.get("seed") for run in picked]
    if len(set(seeds)) < len(seeds):
        notes.append("duplicate seeds")
    if cell.paper_note:
        notes.append(f"paper: {cell.paper_note}")
    return [
        str(cell.row), cell.column, _ours_text(result, picked), result["n"],
        _paper_text(spec, cell, paper, paper_std), _diff_text(result["mean"], paper, number_format(cell.metric)),
        scale_text(picked, cell.paper_setting), "; ".join(notes),
    ]


def _ours_text(result, picked):
    if not picked:
        return NO_RUNS
    return result["text"] if result["n"] else f"no value ({len(picked)} runs)"


def _paper_text(spec, cell, paper, paper_std):
    text = _raw_paper_text(spec, cell)
    if paper is None:
        return UNKNOWN_PAPER if text in ("", UNKNOWN) else text
    return text if paper_std is None else f"{text} ± {_raw_paper_text(spec, cell, cell.paper_std_at)}"


def _raw_paper_text(spec, cell, at=None):
    """The paper's number as printed in the CSV (keeps 73.975, 5.054, 7e-7 as they are)."""
    row, column = at or (cell.row, cell.paper_column)
    table = spec.paper
    if isinstance(row, int) and str(row) not in table.index:
        return table[column].iloc[row - 1].strip()
    return table.loc[table.index == str(row), column].iloc[0].strip()


def _diff_text(mean, paper, spec):
    if mean is None or paper is None:
        return "–"
    return f"{mean - paper:+{spec}}"
