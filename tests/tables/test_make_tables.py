"""`make tables` on a fixture of run summaries, on the repository's own paper tables with no runs, and the paper CSVs
against the transcription in psgd_notes.md §6."""

import csv
import io
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from scripts.make_tables import main, make_tables
from scripts.tables.spec import load_specs

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
REPO = HERE.parent.parent
PAPER = REPO / "results" / "paper"
NOTES = REPO.parent / "shared" / "reference" / "psgd_notes.md"


def _table_lines(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| :")]


def _cells(markdown, line=0):
    """{(row, column): {header: value}} from a generated markdown table; a cell whose runs used several scales
    has a line per scale (`line` picks one: 0 is the paper's scale when it was run)."""
    lines = [[c.strip() for c in text.strip("|").split("|")] for text in _table_lines(markdown)]
    header, cells = lines[0], {}
    for row in lines[1:]:
        cells.setdefault((row[0], row[1]), []).append(dict(zip(header, row)))
    return {key: found[min(line, len(found) - 1)] for key, found in cells.items()}


def test_fixture_tables_match_expected(tmp_path):
    make_tables(FIXTURES / "runs", FIXTURES / "paper", tmp_path)
    for expected in sorted((FIXTURES / "expected").iterdir()):
        assert (tmp_path / expected.name).read_text() == expected.read_text(), expected.name


def test_fixture_cells_mean_std_missing_runs_and_unknown_paper_cells(tmp_path):
    make_tables(FIXTURES / "runs", FIXTURES / "paper", tmp_path)
    acc = _cells((tmp_path / "fixture_acc.md").read_text())
    sgd = [99.0, 98.0]  # the two SGD fixture runs' val/accuracy × 100
    assert acc[("test_acc", "SGD")]["ours (mean ± std)"] == f"{statistics.fmean(sgd):.2f} ± {statistics.stdev(sgd):.2f}"
    assert acc[("test_acc", "SGD")]["n"] == "2"
    assert acc[("test_acc", "SGD")]["paper"] == "99.04 ± 0.10"
    assert acc[("test_acc", "SGD")]["ours − paper"] == f"{statistics.fmean(sgd) - 99.04:+.2f}"
    reduced_sgd = _cells((tmp_path / "fixture_acc.md").read_text(), line=1)[("test_acc", "SGD")]  # not averaged in
    assert (reduced_sgd["ours (mean ± std)"], reduced_sgd["n"]) == ("97.00 ± –", "1")
    assert reduced_sgd["scale"] == "reduced: trainer.epochs=2 (paper 10)"
    assert acc[("test_acc", "KFAC")]["paper"] == "? (unknown)"           # unknown paper cell, runs present
    assert acc[("test_acc", "KFAC")]["ours − paper"] == "–"
    assert acc[("test_acc", "PSGD")]["ours (mean ± std)"] == "no runs"   # paper number, no runs
    assert acc[("test_acc", "Adam")]["scale"] == "reduced: trainer.epochs=2 (paper 10)"
    assert "1 of 2 runs lack the metric" in acc[("test_acc", "Adam")]["note"]
    xor = _cells((tmp_path / "fixture_xor.md").read_text())
    assert xor[("32", "PSGD_LRA_RNN")]["ours (mean ± std)"] == "0.67 (2/3)"
    assert xor[("32", "PSGD_LRA_RNN")]["scale"] == "reduced: trainer.max_steps=2000 (paper 100000)"
    assert xor[("32", "SGD_RNN")]["ours (mean ± std)"] == "no runs"
    assert xor[("32", "SGD_RNN")]["paper"] == "? (unknown)"
    assert xor[("55", "SGD_RNN")]["ours (mean ± std)"] == "0.00 (0/2)"
    assert xor[("55", "SGD_RNN")]["scale"] == "full"
    short = xor[("32", "PSGD_LRA_RNN short")]          # paper_column: compared with PSGD_LRA_RNN's paper number
    assert (short["ours (mean ± std)"], short["paper"], short["ours − paper"]) == ("0.67 (2/3)", "1", "-0.33")


def test_repository_tables_build_with_no_runs(tmp_path, capsys):
    main(["--runs", str(tmp_path / "absent"), "--paper", str(PAPER), "--out", str(tmp_path / "out")])
    specs = load_specs(PAPER)
    assert len(specs) >= 13
    for spec in specs:
        cells = _cells((tmp_path / "out" / f"{spec.name}.md").read_text())
        assert len(cells) == len(spec.cells) > 0, spec.name
        assert {cell["ours (mean ± std)"] for cell in cells.values()} == {"no runs"}, spec.name
        assert (tmp_path / "out" / f"{spec.name}.tex").read_text().count(r"\\") == len(spec.cells) + 1
    assert "(" in (tmp_path / "out" / "README.md").read_text()


def test_every_paper_csv_has_a_mapping_or_is_documentation():
    csvs = {p.stem for p in PAPER.glob("*.csv")}
    mappings = {p.stem for p in PAPER.glob("*.yaml")}
    assert mappings <= csvs
    assert csvs - mappings == {"llqr_figures"}   # LLQR's figure list: settings and claims, no numbers
    assert "llqr_figures" in (PAPER / "SOURCES.md").read_text()


def _numbers(rows):
    found = Counter()
    for row in rows:
        for cell in row:
            try:
                found[float(cell.strip().rstrip("?"))] += 1
            except ValueError:
                pass
    return found


NOTES_SECTIONS = {"6.1": "psgd_table1_lenet5_mnist", "6.2": "psgd_table2_resnet18_cifar10",
                  "6.3": "psgd_table3_cifar10_variants", "6.4": "psgd_table4_ptb_lstm", "6.5": "psgd_table5_nanogpt",
                  "6.6": "psgd_table6_uncertainty", "6.7": "psgd_table7_forgetting",
                  "6.8": "psgd_table10_entropy_forgettability", "6.9": "psgd_table11_entropy_subsets",
                  "6.10": "psgd_table8_delayed_xor", "6.11": "psgd_table9_hparam_robustness",
                  "6.12": "psgd_e3_logistic_regression", "6.13": "psgd_e5_xor_rank"}


@pytest.mark.skipif(not NOTES.is_file(), reason="needs ../shared/reference/psgd_notes.md")
def test_paper_csvs_hold_every_number_of_the_notes_transcription():
    """Every number in psgd_notes.md §6's CSV blocks (row labels aside) is in our CSV, and "?" cells stay unknown."""
    text = NOTES.read_text()
    for section, name in NOTES_SECTIONS.items():
        block = re.search(rf"### {re.escape(section)} .*?```csv\n(.*?)```", text, re.S).group(1)
        notes_rows = [row[1:] for row in list(csv.reader(io.StringIO(block)))[1:]]
        ours_rows = list(csv.reader((PAPER / f"{name}.csv").open()))[1:]
        missing = _numbers(notes_rows) - _numbers(ours_rows)
        assert not missing, (name, missing)
        notes_unknown = sum(cell.strip() == "?" for row in notes_rows for cell in row)
        ours_unknown = sum(cell.strip() == "?" for row in ours_rows for cell in row)
        assert ours_unknown >= notes_unknown, name


def test_figures_are_written(tmp_path):
    from scripts.tables.figures import curves_figure

    make_tables(FIXTURES / "runs", FIXTURES / "paper", tmp_path / "tables", tmp_path / "figures")
    assert (tmp_path / "figures" / "fixture_xor.png").stat().st_size > 0      # success-rate table with runs
    assert not (tmp_path / "figures" / "fixture_acc.png").exists()            # not a success-rate table
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "train/loss": 0.7}\n{"step": 20, "train/loss": 0.1, "val/accuracy": 0.9}\n')
    curves_figure(tmp_path / "curves.png", [run])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_metric_format_prints_tiny_values_in_scientific_notation():
    from scripts.tables.metrics import aggregate

    entropies = aggregate([1e-16, 3e-16], {"kind": "final", "format": ".1e"})
    assert entropies["text"] == "2.0e-16 ± 1.4e-16"
    assert aggregate([1e-16, 3e-16], {"kind": "final"})["text"] == "0.00 ± 0.00", "digits stay the default"
