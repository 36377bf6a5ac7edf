"""scripts/rosenbrock_llqr.py at a few steps: Newton and the exact LQR (Riccati) steps coincide (the LLQR paper's
Theorem: the steepest-descent step under the Newton metric is the LQR solution), and `--table-dir` writes runs that
`make tables` reads, with each LLQR run's inner-solver settings compared with the paper's."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from scripts.make_tables import make_tables
from scripts.rosenbrock_llqr import main

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper"


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rosenbrock")
    main(["--steps", "25", "--refit-every", "1", "10", "--inner-steps", "20", "--run-dir", str(root / "run"),
          "--fig-dir", str(root / "fig"), "--table-dir", str(root / "runs" / "llqr_rosenbrock")])
    assert torch.get_default_dtype() == torch.float32  # the script's float64 must not leak into later tests
    return root


def _summary(root, method):
    return json.loads((root / "runs" / "llqr_rosenbrock" / method / "summary.json").read_text())


def test_newton_and_riccati_trajectories_end_at_the_same_loss(table_runs):
    newton, riccati = _summary(table_runs, "newton"), _summary(table_runs, "riccati")
    assert newton["steps"] == riccati["steps"] == 25
    assert riccati["final"]["train/loss"] == pytest.approx(newton["final"]["train/loss"], rel=1e-9, abs=1e-15)


def test_table_dir_holds_summary_config_and_command_per_method(table_runs):
    run = table_runs / "runs" / "llqr_rosenbrock" / "llqr_scalar_T10"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["refit_every"] == 10 and config["inner_steps"] == 20 and config["inner_lr"] == 1e-4
    assert "inner_steps" not in yaml.safe_load((run.parent / "newton" / "config.yaml").read_text())
    assert (run / "command.txt").read_text().startswith("OMP_NUM_THREADS=1 python -m scripts.rosenbrock_llqr --steps 25")


def test_make_tables_reads_the_runs_and_names_the_reduced_inner_solver(table_runs, tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    for suffix in ("yaml", "csv"):
        shutil.copy(PAPER / f"llqr_fig2_rosenbrock.{suffix}", paper)
    make_tables(table_runs / "runs", paper, tmp_path / "tables")
    lines = (tmp_path / "tables" / "llqr_fig2_rosenbrock.md").read_text().splitlines()
    cells = {(row[0], row[1]): row[2:] for row in ([c.strip() for c in line.strip("|").split("|")]
                                                   for line in lines if line.startswith("| "))}
    steps = cells[("LLQR block-diagonal (two-layer), refit every 10 steps", "steps")]
    assert steps[0] == "25 ± –" and steps[4] == "reduced: inner_steps=20 (paper 500)"
    assert cells[("Newton", "steps")][4] == "not declared"
    assert cells[("LLQR block-diagonal (two-layer), refit every 100 steps", "final loss")][0] == "no runs"  # not run
