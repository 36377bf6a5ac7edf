"""A table's mapping from paper cells to runs: results/paper/<table>.yaml beside <table>.csv.

    title, source, caveats      shown above and below the generated table
    paper_csv                   the paper's numbers (default: <table>.csv)
    metric                      how a run becomes the cell's number (metrics.py), overridable per row/column/cell
    paper_setting               {config key: paper value}: the full-scale setting (scale.py), merged per row/column
    paper_runs                  how many runs the paper averages over
    select                      selector shared by all cells (runs.py: experiment, choices, config, summary)
    rows / columns              {paper label: entry}; rows default to every row of the CSV
    cells                       {"row | column": entry}: per-cell overrides

An entry may hold: select, metric, paper_setting, note, needs_gpu (true: only a smoke run is expected here),
not_reproduced (a reason: no runs are expected), paper_std_row / paper_std_column (where the paper's std is),
paper_column (the CSV column holding this column's paper number, when several of our columns compare with one of the
paper's), paper_note (a caveat on the paper's number). Selectors and settings merge table < row < column < cell.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .paper import load_paper_table


@dataclass
class Cell:
    row: object
    column: str
    select: dict
    metric: dict
    paper_setting: dict
    notes: list = field(default_factory=list)
    paper_std_at: tuple = None
    paper_note: str = None
    not_reproduced: str = None
    paper_column: str = None      # the CSV column with the paper's number (default: the column's own label)


@dataclass
class TableSpec:
    name: str
    title: str
    source: str
    caveats: list
    paper: object            # pandas DataFrame of strings, indexed by row label
    paper_runs: int
    cells: list
    metric: dict


def load_spec(yaml_path):
    yaml_path = Path(yaml_path)
    raw = yaml.safe_load(yaml_path.read_text()) or {}
    paper = load_paper_table(yaml_path.with_name(raw.get("paper_csv", yaml_path.stem + ".csv")))
    rows = raw.get("rows") or {label: {} for label in paper.index}
    columns = raw.get("columns") or {}
    cells = [_cell(raw, row, rows[row] or {}, column, columns[column] or {}) for row in rows for column in columns]
    return TableSpec(yaml_path.stem, raw.get("title", yaml_path.stem), raw.get("source", ""),
                     list(raw.get("caveats") or []), paper, raw.get("paper_runs"), cells, raw.get("metric") or {})


def _cell(raw, row, row_entry, column, column_entry):
    cell_entry = (raw.get("cells") or {}).get(f"{row} | {column}") or {}
    layers = [raw, row_entry, column_entry, cell_entry]
    select = {}
    for layer in layers:
        select = _merge(select, layer.get("select") or {})
    setting = {}
    for layer in layers:
        setting.update(layer.get("paper_setting") or {})
    metric = next(layer["metric"] for layer in reversed(layers) if layer.get("metric"))
    notes = [layer["note"] for layer in layers[1:] if layer.get("note")]
    if any(layer.get("needs_gpu") for layer in layers):
        notes.insert(0, "needs GPU (smoke run only here)")
    paper_column = next((layer["paper_column"] for layer in reversed(layers[1:]) if layer.get("paper_column")), column)
    std_row = next((layer["paper_std_row"] for layer in layers[1:] if layer.get("paper_std_row")), None)
    std_col = next((layer["paper_std_column"] for layer in layers[1:] if layer.get("paper_std_column")), None)
    std_at = (std_row or row, std_col or paper_column) if (std_row or std_col) else None
    paper_note = next((layer["paper_note"] for layer in reversed(layers[1:]) if layer.get("paper_note")), None)
    not_reproduced = next((layer["not_reproduced"] for layer in reversed(layers) if layer.get("not_reproduced")), None)
    return Cell(row, column, select, metric, setting, notes, std_at, paper_note, not_reproduced, paper_column)


def _merge(base, extra):
    """Nested dict merge (extra wins); used for selectors such as {choices: {...}, config: {...}}."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def load_specs(paper_dir):
    """Every mapping in results/paper/, sorted by name."""
    return [load_spec(path) for path in sorted(Path(paper_dir).glob("*.yaml"), key=_natural_key)]


def _natural_key(path):
    """psgd_table2 before psgd_table10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]
