"""The LLQR overhead benchmark runs end to end at toy size and prints one row per structure and refit period."""
import sys

from scripts.benchmarks import bench_llqr


def test_bench_llqr_prints_amortised_ratios(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_llqr", "--device", "cpu", "--problems", "resnet", "--structures",
                                      "diagonal", "--rounds", "1", "--steps", "1", "--warmup", "0", "--inner-steps",
                                      "2", "--batch-size", "8", "--precond-batch-size", "4", "--periods", "250", "1000"])
    bench_llqr.main()
    out = capsys.readouterr().out
    assert "batch 8, refit batch 4, 2 inner steps" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("resnet | ")]
    assert [(r[1], r[2], r[3]) for r in rows] == [("diagonal", "traced", "250"), ("diagonal", "traced", "1000")]
    for r in rows:  # amortised = LLQR ms/step + ms/refit / T; ratio: over the base blocks around it (one round)
        step, apply, refit, amortised, ratio = float(r[5]), float(r[6]), float(r[7]), float(r[9]), float(r[10][:-1])
        assert abs(amortised - (step + refit / int(r[3]))) < 0.01 and ratio > 0 and 0 < apply < step
