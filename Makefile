# The two commands: `make run` (the default study) and `make test` (the test suite), both from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 2

.PHONY: run test setup lock lint bench bench-train slurm-up slurm-down clean

# The environment comes from a lock (every package pinned, with its SHA-256): the same on every machine. A lock
# holds wheels for the Python and platform its header names (CPython 3.11, Linux x86_64; tools/lock.py), which
# tools/check_platform.py checks first. TORCH=cpu (the default): requirements.lock, whose torch is the CPU build from
# the index its header names (torch-index: PyTorch's CPU index), everything else from PyPI. TORCH=cuda:
# requirements-cuda.lock, torch's CUDA build with its NVIDIA libraries, all from PyPI, for a cluster with a GPU
# partition (one venv serves its CPU and GPU jobs: docs/slurm.md). TORCH defaults to the build the venv holds, so `make test` keeps a CUDA
# venv; a change of lock or of TORCH makes the venv afresh.
PYTHON ?= python3
TORCH ?= $(or $(patsubst $(VENV)/.installed-%,%,$(wildcard $(VENV)/.installed-*)),cpu)
$(if $(filter-out cpu cuda,$(TORCH)),$(error TORCH=$(TORCH): it must be cpu or cuda))
LOCK := $(if $(filter cuda,$(TORCH)),requirements-cuda.lock,requirements.lock)
TORCH_INDEX := $(shell sed -n 's/^\# torch-index: //p' $(LOCK))

$(VENV)/.installed-$(TORCH): pyproject.toml $(LOCK)
	@$(PYTHON) tools/check_platform.py $(LOCK)
	@[ ! -e $(VENV) ] || [ -f $(VENV)/pyvenv.cfg ] || { echo "make setup: $(VENV) exists and is no venv; not replacing it" >&2; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3
	grep '^torch==' $(LOCK) > $(VENV)/torch.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
		-r $(VENV)/torch.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e '.[test]'
	touch $@

setup: $(VENV)/.installed-$(TORCH)  ## create .venv and install the locked environment and the package (TORCH=cuda: the GPU build)

lock: setup  ## resolve pyproject.toml afresh: rewrite requirements.lock, requirements-cuda.lock and envs/iteralite.yaml
	$(PY) tools/lock.py $(ARGS)

run: setup  ## run the default study locally; leaves results/report.html
	$(SNAKEMAKE) --cores $(CORES) all

# Two pytest-xdist workers: the Slurm tests, which mostly wait on the scheduler, beside the rest (tests/conftest.py
# says how the tests are grouped between them).
TEST_WORKERS ?= 2

test: setup  ## the whole test suite (unit, workflow, Slurm where the local cluster can be started)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

lint: setup  ## ruff and snakemake --lint
	$(VENV)/bin/ruff check .
	$(SNAKEMAKE) --lint

bench: setup  ## side-by-side speed of baseline and pruned models, printed
	$(PY) -m iteralite.speedcheck $(ARGS)

bench-train: setup  ## the training step of the study's architecture on each of its paths and of the other architecture, side by side (ARGS="--sizes S,M,L")
	$(PY) -m iteralite.trainbench $(ARGS)

slurm-up:  ## start a single-node Slurm cluster on localhost (root, Debian)
	bash tools/slurm-cluster.sh up

slurm-down:
	bash tools/slurm-cluster.sh down

clean:
	rm -rf results logs benchmarks .snakemake
