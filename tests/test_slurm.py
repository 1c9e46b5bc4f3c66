"""The tiny study through profiles/slurm on a real single-node Slurm cluster (tools/slurm-cluster.sh).

Skipped where the cluster cannot be started (not root, no apt). The profile is the real one, its `gres: gpu:1`
requests included (the cluster declares one GPU generic resource), with only the CPUs, memory and time that exceed
the CI node scaled down.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, copy_project, project_env, snakemake

from iteralite.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the local Slurm cluster needs root and apt-get")
    up = subprocess.run(["bash", str(ROOT / "tools/slurm-cluster.sh"), "up"], capture_output=True, text=True,
                        timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    subprocess.run(["bash", str(ROOT / "tools/slurm-cluster.sh"), "down"], capture_output=True, timeout=60)


def ci_profile(dest: Path, finetune_minutes: int = 30, retries: int | None = None) -> Path:
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["slurm-init-seconds-before-status-checks"] = 1
    profile["latency-wait"] = 5
    profile["retries"] = retries or profile["retries"]
    profile["default-resources"].update({"mem_mb": 1500, "cpus_per_task": 1})
    for rule, resources in profile["set-resources"].items():
        assert resources["gres"] == "gpu:1", rule  # kept: the cluster's gres must reach the training jobs
        minutes = finetune_minutes if rule == "finetune" else 30
        resources.update({"cpus_per_task": 2, "mem_mb": 3000, "runtime": minutes})
        profile["set-threads"][rule] = 2
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def run_on_slurm(workdir: Path, profile: Path, *args) -> list[list[str]]:
    """Snakemake with the profile; the sacct rows (Comment, Partition, State, AllocTRES) of the jobs it submitted."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    run = subprocess.run(["timeout", "-k", "10", "1500", sys.executable, "-m", "snakemake", "--profile", str(profile),
                          *args], cwd=workdir, capture_output=True, text=True, env=project_env(workdir))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    listing = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Comment,Partition,State,AllocTRES", "-S", since],
                             capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in listing.splitlines() if line.startswith("rule_")]


def test_tiny_study_on_slurm(cluster, tmp_path):
    workdir = copy_project(tmp_path / "study")
    rows = run_on_slurm(workdir, ci_profile(tmp_path / "profile"), "all", "--configfile", "config/ci.yaml")
    assert (workdir / "results/report.html").is_file()
    assert rows and all(state == "COMPLETED" for _, _, state, _ in rows), rows
    rules = {comment.split("_wildcards_")[0].removeprefix("rule_"): partition for comment, partition, _, _ in rows}
    on_gpu = sorted(c for c, p, _, _ in rows if p == "gpu")
    # the baseline and the 10 fine-tunes of the tiny study, and nothing else
    assert len(on_gpu) == 11 and all(c.startswith(("rule_train_baseline", "rule_finetune")) for c in on_gpu), on_gpu
    with_gpu = sorted(c for c, _, _, tres in rows if "gres/gpu=1" in tres)
    assert with_gpu == on_gpu, (with_gpu, on_gpu)  # allocated the GPU resource exactly where it was asked for
    assert rules["prune"] == "cpu" and rules["benchmark"] == "cpu"
    assert "summary" not in rules and "report" not in rules  # local rules run on the submitting host


# The control fine-tune of the tiny study, made long: 4200 steps of about 25 ms here, well past its one-minute time
# limit (first attempts were stopped at steps 1950-3000 here). Only the signal can save its state (no periodic
# state before the end), so a retry can only resume what SIGTERM saved.
LONG_FINETUNE = {"seeds": [1], "finetune": {"max_steps": 4200, "max_epochs": 1000, "eval_every": 1050,
                                            "checkpoint_every": 4200, "early_stopping_patience": None}}
CONTROL = "results/models/finetuned/dense-s1"


def test_a_fine_tune_past_its_time_limit_resumes_to_the_same_model(cluster, tmp_path):
    """Slurm stops the fine-tune at its limit (runtime: 1 minute) with SIGTERM; the loop saves its state, the job
    ends TIMEOUT, Snakemake's retry resumes it; the model and curve equal those of an uninterrupted run."""
    workdir = copy_project(tmp_path / "study")
    (workdir / "config/long_finetune.yaml").write_text(yaml.safe_dump(LONG_FINETUNE))
    configs = ["--configfile", "config/ci.yaml", "config/long_finetune.yaml"]
    profile = ci_profile(tmp_path / "profile", finetune_minutes=1, retries=5)
    rows = run_on_slurm(workdir, profile, f"{CONTROL}/model.pt", *configs)
    attempts = [state for comment, _, state, _ in rows if comment.startswith("rule_finetune")]
    assert attempts[0] == "TIMEOUT" and attempts[-1] == "COMPLETED", attempts
    log = (workdir / "logs/finetune/dense-s1.log").read_text()
    assert "resumed from" in log, log[-2000:]

    reference = tmp_path / "reference"
    shutil.copytree(workdir, reference, symlinks=True)
    snakemake(reference, "-f", f"{CONTROL}/model.pt", "--cores", "2", "--set-threads", "finetune=2", *configs)
    assert "resumed from" not in (reference / "logs/finetune/dense-s1.log").read_text()
    resumed, uninterrupted = (load_checkpoint(d / CONTROL / "model.pt")[0].state_dict() for d in (workdir, reference))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    curves = [pd.read_csv(d / CONTROL / "curve.csv")[["step", "train_loss", "val_ppl"]] for d in (workdir, reference)]
    pd.testing.assert_frame_equal(*curves)
