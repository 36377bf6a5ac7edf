"""Read a paper table from results/paper/<table>.csv. The first column holds the row labels, the other columns are
the paper's columns; "?" marks a cell the source text does not let us recover (kept unknown, never guessed)."""

from pathlib import Path

import pandas as pd

UNKNOWN = "?"


def load_paper_table(path):
    """The CSV as strings, indexed by its first column (row labels)."""
    table = pd.read_csv(Path(path), dtype=str, keep_default_na=False, comment=None)
    return table.set_index(table.columns[0])


def paper_cell(table, row, column):
    """The paper's number at (row, column) as a float; None when the cell is "?" (unknown) or not a number.

    `row` is a row label; an int picks the row by its 1-based position (for tables whose rows repeat labels)."""
    if column not in table.columns:
        raise KeyError(f"no column {column!r} in paper table (columns: {list(table.columns)})")
    if isinstance(row, int) and not isinstance(row, bool) and str(row) not in table.index:
        text = table[column].iloc[row - 1]
    else:
        matches = table.loc[table.index == str(row), column]
        if len(matches) != 1:
            raise KeyError(f"row {row!r} matches {len(matches)} rows of the paper table")
        text = matches.iloc[0]
    try:
        return float(text.strip())
    except ValueError:  # "?" (unknown) or a word such as "figure only" (LLQR reports figures, not numbers)
        return None
