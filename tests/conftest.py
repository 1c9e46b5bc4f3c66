import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest

# One torch thread in the test processes and in what they start: the two workers of `make test` share 2 cores, and a
# torch thread that waits on another for a core held by another process spins meanwhile (a training step of the tiny
# study took three times as long with two threads beside one busy process as with one; with one, no longer than
# alone). Read by torch when it is imported, and inherited by subprocesses.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig
from iteralite.architectures.selective_scan.model import Model as SelectiveScan


@pytest.fixture
def tiny_cfg():
    return SelectiveScanConfig(vocab_size=300, d_model=32, n_layers=2, max_seq=32, d_inner=48, d_state=4, d_conv=4,
                           n_experts=4, expert_hidden=16, top_k=2)


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    model = SelectiveScan(tiny_cfg).eval()
    # Move weights away from init so no channel is trivially zero or equal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


# --- the workflow through Snakemake, in a copy of the project -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


# A forward and backward pass with one thread and with two: numba compiles the scan kernels' serial and parallel
# variants (about 27 s here) and caches them in iteralite/__pycache__.
COMPILE_KERNELS = """
import torch
from iteralite.architectures.selective_scan.model import Model as SelectiveScan
from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig
model = SelectiveScan(SelectiveScanConfig(vocab_size=64, d_model=16, n_layers=2, max_seq=8, d_inner=16, d_state=4,
                                          d_conv=4, n_experts=2, expert_hidden=8, top_k=2))
for threads in (1, 2):
    torch.set_num_threads(threads)
    model(torch.zeros(1, 8, dtype=torch.long))[0].sum().backward()
"""


@cache
def compile_kernels() -> None:
    """Once per test process; under pytest-xdist the workers take turns (a lock file), so the second loads what the
    first compiled instead of compiling it beside it."""
    with open(Path(tempfile.gettempdir()) / "iteralite-test-kernels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, "-c", COMPILE_KERNELS], cwd=ROOT, check=True, env=project_env(ROOT))


def copy_project(dest: Path) -> Path:
    """The workflow and its own copy of the package, so a test can edit the package code the workflow runs. The
    copy takes numba's cache of the compiled kernels with it (keyed by each source file's size and time, which the
    copy keeps): each copy would otherwise compile them again in its first job."""
    compile_kernels()
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "rules", "scripts", "config", "report", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    shutil.copytree(ROOT / "iteralite", dest / "iteralite")
    return dest


def project_env(workdir: Path) -> dict:
    """Snakemake and its jobs import the project copy's package."""
    return {**os.environ, "PYTHONPATH": str(workdir)}


def snakemake(workdir: Path, *args, check=True, env: dict | None = None):
    """Snakemake in `workdir`, each job on one thread (a rule asking for two gets one: see OMP_NUM_THREADS above)."""
    run = subprocess.run([sys.executable, "-m", "snakemake", "--max-threads", "1", *args], cwd=workdir,
                         capture_output=True, text=True, timeout=1200, env=env or project_env(workdir))
    if check and run.returncode != 0:
        raise AssertionError(run.stdout[-4000:] + run.stderr[-4000:])
    return run


# What a job that holds a GPU and sees none is told to do, by the venv's torch build (train.pick_device)
NO_CUDA_ADVICE = (r"torch \S+ is a CPU build: make setup TORCH=cuda" if torch.version.cuda is None
                  else r"this torch build has CUDA: check the driver with nvidia-smi")


# A folder whose sitecustomize records every rename each process of the study makes (in RENAMES of the study).
RENAME_AUDIT = ROOT / "tests" / "rename_audit"
RENAMES = ".test-renames"


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The tiny study of config/ci.yaml, run once per test session; its processes record their renames."""
    workdir = copy_project(tmp_path_factory.mktemp("study"))
    (workdir / RENAMES).mkdir()
    env = {**project_env(workdir), "PYTHONPATH": os.pathsep.join([str(workdir), str(RENAME_AUDIT)]),
           "ITERALITE_TEST_RENAMES": str(workdir / RENAMES)}
    start = time.perf_counter()
    snakemake(workdir, "all", "--cores", "2", "--configfile", "config/ci.yaml", env=env)
    print(f"tiny study: {time.perf_counter() - start:.0f} s")
    return workdir


# `make test` runs the tests in two pytest-xdist workers, each group of tests whole in one worker: the Slurm tests in
# one (they share the cluster and mostly wait on it), the modules of the tiny study in one (they share it, and some
# edit its files in turn), every other module in one of its own (its module fixtures made once). The two long groups
# go first, one to each worker; the other modules fill in after them. (pytest-xdist's own `--dist loadgroup` cannot
# group here: with pytest 9.2 the test ids it would rewrite are no longer the ones pytest reports.)
SLURM_MODULES = ("test_slurm.py",)
STUDY_MODULES = ("test_portable.py", "test_report_browser.py", "test_workflow.py")


def worker_group(module: str) -> str:
    return "slurm" if module in SLURM_MODULES else "study" if module in STUDY_MODULES else module


def pytest_collection_modifyitems(items):
    for item in items:  # a test of the study or of the cluster elsewhere would run beside the group that edits it
        assert item.path.name in STUDY_MODULES or "study" not in item.fixturenames, item.nodeid
        assert item.path.name in SLURM_MODULES or "cluster" not in item.fixturenames, item.nodeid
    items.sort(key=lambda item: worker_group(item.path.name) not in ("slurm", "study"))  # stable: groups keep order


if importlib.util.find_spec("xdist"):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """Whole groups to a worker, in the order collected."""

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(Path(nodeid.split("::", 1)[0]).name)

    def pytest_xdist_make_scheduler(config, log):
        config.option.loadscopereorder = False  # not the most tests first: the order collected, long groups first
        return GroupScheduling(config, log)
