"""The paper sweeps in slurm/sweeps/: each dry-runs without submitting, every job builds (its overrides compose,
resolve, and its optimizer and schedule build as the training loop builds them), and every job lands in a cell of the
table mapping it is for, while every cell the repository can run is filled with at least the paper's run count."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.compose import CONFIGS, REPO_ROOT, composed_run_config
from harness.protocol import build_optimizer
from harness.schedules import Schedule
from scripts.sweep import SWEEPS, jobs_of, load_sweep, main
from scripts.tables.runs import Run, select
from scripts.tables.spec import load_spec

PAPER = REPO_ROOT / "results" / "paper"
ALL_SWEEPS = sorted(p.stem for p in SWEEPS.glob("*.yaml"))

# table mapping -> the sweeps whose jobs fill it (Table 3's SGD + M Standard cell is psgd_table2's cosine SGD runs)
MAPPINGS = {
    "psgd_table1_lenet5_mnist": ["psgd_table1"],
    "psgd_table2_resnet18_cifar10": ["psgd_table2"],
    "psgd_table3_cifar10_variants": ["psgd_table3", "psgd_table2"],
    "psgd_table4_ptb_lstm": ["psgd_table4"],
    "psgd_table5_nanogpt": ["psgd_table5"],
    "psgd_table8_delayed_xor": ["psgd_table8"],
    "psgd_e3_logistic_regression": ["psgd_e3"],
    "psgd_table11_entropy_subsets": ["psgd_table11"],
    "psgd_table6_uncertainty": ["psgd_forgetting"],
    "psgd_table7_forgetting": ["psgd_table7", "psgd_forgetting"],
    "psgd_table10_entropy_forgettability": ["psgd_forgetting"],
    "psgd_e5_xor_rank": ["psgd_e5"],
    "psgd_fig2a_noisy_to_clean": ["psgd_fig2a"],
    "psgd_fig3_mnist_lra_rank": ["psgd_fig3"],
    "psgd_fig6_logistic_bernoulli": ["psgd_fig6"],
    "psgd_fig1_ppo": ["psgd_fig1_ppo"],
    "llqr_fig3_grokking": ["llqr_grokking"],
    "llqr_fig5_cifar": ["llqr_cifar"],
    "llqr_fig1": ["imagenet_resnet50", "iwslt14_transformer"],
}
# Mappings that select runs under other names than the presets the sweeps use (the lead updates these mappings);
# strict: once a mapping is fixed the test passes and the mark must go.
EXPECTED_JOBS = {"psgd_e5": 2 * 5 * 10, "psgd_table8": 2 * 4 * 7 * 10, "psgd_fig1_ppo": 2 * 4 * 3, "psgd_table2": 4 * 2 * 16,
                 "demo_grid": 4}
_BUILT = {}


def built(overrides):
    """The resolved config `python train.py <overrides>` would train (choices recorded), composed once for all
    seeds: the seed changes nothing else that is checked here."""
    key = tuple(o for o in overrides if not o.startswith("seed="))
    if key not in _BUILT:
        _BUILT[key] = OmegaConf.to_container(composed_run_config(key), resolve=True)
    return _BUILT[key]


def unique_jobs(sweep):
    """One job per combination of everything but the seed."""
    jobs = {}
    for name, overrides in jobs_of(load_sweep(sweep)):
        jobs.setdefault(tuple(o for o in overrides if not o.startswith("seed=")), (name, overrides))
    return list(jobs.values())


def seed_of(overrides):
    return next(int(o.split("=", 1)[1]) for o in overrides if o.startswith("seed="))


def build_on_a_small_model(optimizer_cfg):
    """The optimizer of a job, built as the training loop builds it (harness.protocol.build_optimizer), on a small
    MLP: a config key the constructor does not take, or a value it refuses, raises here."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    batch = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    return build_optimizer(OmegaConf.create(optimizer_cfg), model, "cross_entropy", lambda n: batch)


@pytest.mark.parametrize("sweep", ALL_SWEEPS)
def test_dry_run_lists_every_job_and_submits_nothing(sweep, capsys, monkeypatch):
    def no_submission(*args, **kwargs):
        raise AssertionError("a dry run must not build an executor")

    monkeypatch.setattr("scripts.sweep.make_executor", no_submission)
    assert main([sweep, "--dry-run"]) == []
    out = capsys.readouterr().out
    jobs = list(jobs_of(load_sweep(sweep)))
    assert f"sweep {sweep}: {len(jobs)} jobs" in out
    assert sum("python train.py" in line for line in out.splitlines()) == len(jobs)


def test_job_counts_of_the_paper_sweeps():
    counts = {sweep: len(list(jobs_of(load_sweep(sweep)))) for sweep in EXPECTED_JOBS}
    assert counts == EXPECTED_JOBS


@pytest.mark.parametrize("sweep", [s for s in ALL_SWEEPS if s != "demo_grid"])
def test_paper_sweep_files_name_their_table_and_use_existing_configs(sweep):
    header = (SWEEPS / f"{sweep}.yaml").read_text().split("\ndescription:")[0]
    assert "paper" in header and ("Mapping: results/paper/" in header or "No table mapping yet" in header), sweep
    for _, overrides in jobs_of(load_sweep(sweep)):
        for override in overrides:
            key, _, value = override.partition("=")
            if key in ("optimizer", "experiment", "dataset", "schedule", "model"):
                assert (CONFIGS / key / f"{value}.yaml").is_file(), override


@pytest.mark.parametrize("sweep", ALL_SWEEPS)
def test_every_job_composes_and_fits_its_constructors(sweep):
    for name, overrides in unique_jobs(sweep):
        cfg = built(overrides)
        optimizer = build_on_a_small_model(cfg["optimizer"])
        assert optimizer.param_groups[0]["lr"] == cfg["optimizer"]["lr"], name
        critic = (cfg.get("task") or {}).get("critic_optimizer")
        if critic is not None:
            build_on_a_small_model(critic)
        Schedule(cfg["schedule"], 1000, 10).attach(optimizer)   # a schedule key it does not take raises ConfigError


def _jobs_as_runs(sweeps):
    """Each job as the run the table builder would see: its summary's experiment and choices, its config."""
    runs = []
    for sweep in sweeps:
        for name, overrides in jobs_of(load_sweep(sweep)):
            cfg = built(overrides)
            summary = {"experiment": cfg["experiment_name"], "choices": cfg["choices"], "seed": seed_of(overrides)}
            runs.append(Run(Path(sweep) / name, summary, cfg))
    return runs


def _runnable(cell):
    """A cell the repository can run: reproduced, and its preset and optimizer config exist."""
    experiment = cell.select.get("experiment")
    optimizer = (cell.select.get("choices") or {}).get("optimizer")
    return (not cell.not_reproduced and (experiment is None or (CONFIGS / "experiment" / f"{experiment}.yaml").is_file())
            and (optimizer is None or (CONFIGS / "optimizer" / f"{optimizer}.yaml").is_file()))


@pytest.mark.parametrize("mapping", list(MAPPINGS))
def test_sweeps_fill_their_table(mapping):
    spec = load_spec(PAPER / f"{mapping}.yaml")
    runs = _jobs_as_runs(MAPPINGS[mapping])
    mine = {run.name for run in _jobs_as_runs(MAPPINGS[mapping][:1])}
    landed = {run.name for cell in spec.cells if not cell.not_reproduced for run in select(runs, cell.select)}
    stray = sorted(mine - landed)
    assert not stray, f"{len(stray)} jobs in no cell of {mapping}, e.g. {stray[:2]}"
    for cell in filter(_runnable, spec.cells):
        seeds = {run.summary["seed"] for run in select(runs, cell.select)}
        assert len(seeds) >= (spec.paper_runs or 1), (cell.row, cell.column, len(seeds))


def test_the_readme_lists_every_sweep_with_its_job_count_and_device():
    rows = {}
    for line in (REPO_ROOT / "slurm" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (int(cells[2]), cells[3])
    for sweep in ALL_SWEEPS:
        spec = load_sweep(sweep)
        device = "GPU" if (spec.get("resources") or {}).get("gpus_per_node") else "CPU"
        assert rows.get(sweep) == (len(list(jobs_of(spec))), device), sweep


# AdaBelief's run_all_layer{1,2,3}.py and its PTB main.py (the PSGD authors' copy: opooladz/Preconditioned-Stochastic-
# Gradient-Descent@7a6b914 RNN-PennTreeBank/): step size by layer count, AdaBelief's --eps (the only optimizer main.py
# passes it to), and what each constructor call fixes (SGD without momentum, AdaBound's final_lr 30, coupled decay but
# for AdamW.py and RAdam.py).
RUN_ALL_LR = {1: {"adabelief": 0.001, "adam": 0.001, "adamw": 0.001, "radam": 0.001},
              2: {"adabelief": 0.01, "adam": 0.01, "adamw": 0.01, "radam": 0.01},
              3: {"adabelief": 0.01, "adam": 0.01, "adamw": 0.01, "radam": 0.01}}
RUN_ALL_COMMON = {"sgd": {"lr": 30.0, "momentum": 0.0, "weight_decay": 1.2e-6},
                  "adabound": {"lr": 0.01, "final_lr": 30.0, "gamma": 1e-3, "eps": 1e-8, "weight_decouple": False},
                  "yogi": {"lr": 0.01, "eps": 1e-3, "weight_decouple": False},
                  "adam": {"eps": 1e-8}, "adamw": {"eps": 1e-8},
                  "radam": {"eps": 1e-8, "decoupled_weight_decay": True},
                  "adabelief": {"weight_decouple": False, "rectify": False}}


def test_table4_baselines_follow_the_run_all_scripts():
    seen = set()
    for name, overrides in unique_jobs("psgd_table4"):
        cfg = built(overrides)
        layers, optimizer = cfg["model"]["num_layers"], cfg["choices"]["optimizer"]
        seen.add((layers, optimizer))
        expected = {**RUN_ALL_COMMON.get(optimizer, {})}
        if optimizer in RUN_ALL_LR[layers]:
            expected["lr"] = RUN_ALL_LR[layers][optimizer]
        if optimizer == "adabelief":
            expected["eps"] = 1e-16 if layers == 1 else 1e-12
        if optimizer != "psgd_xmat":
            expected.update(weight_decay=1.2e-6)
            assert cfg["trainer"]["grad_clip"] == 0.25, name
        assert {key: cfg["optimizer"][key] for key in expected} == expected, name
    assert len(seen) == 30
