# The two commands: `make run` (the default study) and `make test` (the test suite), both from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: run test setup lint bench bench-train slurm-up slurm-down clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the package with its pinned dependencies

run: setup  ## run the default study locally; leaves results/report.html
	$(SNAKEMAKE) --cores $(CORES) all

test: setup  ## the whole test suite (unit, workflow, Slurm where the local cluster can be started)
	$(PY) -m pytest -q tests

lint: setup  ## ruff and snakemake --lint
	$(VENV)/bin/ruff check .
	$(SNAKEMAKE) --lint

bench: setup  ## side-by-side speed of baseline and pruned models, printed
	$(PY) -m iteralite.speedcheck

bench-train: setup  ## the training step with the fused scan, the reference scan and no scan, side by side, printed
	$(PY) -m iteralite.trainbench

slurm-up:  ## start a single-node Slurm cluster on localhost (root, Debian)
	bash tools/slurm-cluster.sh up

slurm-down:
	bash tools/slurm-cluster.sh down

clean:
	rm -rf results logs benchmarks .snakemake
