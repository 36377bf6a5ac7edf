# Run `make help` for the list of targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Where the offline dataset mirror is, when there is one (see README, "Data").
export REPRO_DATA_MIRROR ?= $(wildcard ../shared/data)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo tables bench clean sweep collect

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## Create .venv (when absent) and install the project into it

test: install  ## Run the whole test suite (CPU)
	$(PY) -m pytest -q

test-fast: install  ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

demo: install  ## Compare the optimizers on delayed XOR (no download), print a table, write a plot
	$(PY) -m scripts.demo

tables: install  ## Regenerate results/tables from results/runs and results/paper (never retrains)
	$(PY) -m scripts.make_tables

bench: install  ## Print ms/step and state-size ratios of every optimizer against its base optimizer
	for b in scripts/benchmarks/bench_*.py; do $(PY) -m scripts.benchmarks.$$(basename $$b .py) || exit 1; done

clean:  ## Remove Hydra outputs and caches (keeps .venv and results/)
	rm -rf outputs multirun .pytest_cache

sweep: install  ## Submit slurm/sweeps/$(SWEEP).yaml (DRY_RUN=1 lists the jobs; EXECUTOR=local runs them here)
	$(PY) -m scripts.sweep $(SWEEP) --executor $(or $(EXECUTOR),slurm) $(if $(DRY_RUN),--dry-run,)

collect: install  ## Copy finished runs (summary, config, metrics, command) from $(RUNS) (default outputs/sweeps) into results/runs/
	$(PY) -m scripts.collect_runs $(or $(RUNS),outputs/sweeps) --with-metrics
