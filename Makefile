# The two commands: `make run` (the default study) and `make test` (the test suite), both from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: run test setup lock lint bench bench-train slurm-up slurm-down clean

# The environment comes from requirements.lock (every package pinned, with its SHA-256): the same on every machine.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e '.[test]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the locked environment and the package

lock: setup  ## resolve pyproject.toml afresh: rewrite requirements.lock and the pins of envs/iteralite.yaml
	$(PY) tools/lock.py

run: setup  ## run the default study locally; leaves results/report.html
	$(SNAKEMAKE) --cores $(CORES) all

test: setup  ## the whole test suite (unit, workflow, Slurm where the local cluster can be started)
	$(PY) -m pytest -q --durations=10 tests

lint: setup  ## ruff and snakemake --lint
	$(VENV)/bin/ruff check .
	$(SNAKEMAKE) --lint

bench: setup  ## side-by-side speed of baseline and pruned models, printed
	$(PY) -m iteralite.speedcheck

bench-train: setup  ## the training step: project's path, reference path, no-scan floor, side by side (ARGS="--sizes S,M,L")
	$(PY) -m iteralite.trainbench $(ARGS)

slurm-up:  ## start a single-node Slurm cluster on localhost (root, Debian)
	bash tools/slurm-cluster.sh up

slurm-down:
	bash tools/slurm-cluster.sh down

clean:
	rm -rf results logs benchmarks .snakemake
