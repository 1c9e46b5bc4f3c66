import os
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
import torch

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
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                         timeout=1200, env=env or project_env(workdir))
    if check and run.returncode != 0:
        raise AssertionError(run.stdout[-4000:] + run.stderr[-4000:])
    return run


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
