"""The workflow through profiles/slurm on a real single-node Slurm cluster (tools/slurm-cluster.sh).

Skipped where the cluster cannot be started (not root, no apt, apt unable to install the packages, or a Slurm
configuration the script did not write).
The profile is the real one, its `gres: gpu:1` requests included (the cluster declares one GPU generic resource),
with only the CPUs, memory and time that exceed the CI node scaled down. Snakemake runs through
tests/snakemake_fast_status.py, which checks the jobs' status every 2 s instead of the plugin's growing back-off.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import NO_CUDA_ADVICE, ROOT, copy_project, project_env, snakemake

from iteralite.checkpoint import load_checkpoint
from iteralite.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="session")
def cluster():
    """Started once and left up after the tests (`make slurm-down` stops it): with Slurm's tools installed and no
    controller answering, every later Snakemake start waits about 10 s (the Slurm plugin asks `scontrol show config`
    when Snakemake loads it), and the other test worker still starts Snakemake when this one is done."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the local Slurm cluster needs root and apt-get")
    up = subprocess.run(["bash", str(ROOT / "tools/slurm-cluster.sh"), "up"], capture_output=True, text=True,
                        timeout=900)
    # 3: the machine has a Slurm configuration of its own, which the script leaves alone; 4: apt cannot install
    if up.returncode in (3, 4):
        pytest.skip(up.stderr.strip().splitlines()[-1])
    assert up.returncode == 0, up.stdout + up.stderr


def test_the_cluster_script_exits_4_naming_the_packages_when_apt_cannot_install_them(tmp_path):
    """Without network apt-get fails; the script says which packages it could not install and exits 4, which the
    cluster fixture turns into a skip with that line (an `apt-get update` traceback failed the tests before)."""
    if os.geteuid() != 0:
        pytest.skip("the script runs as root only")
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool, code in (("dpkg", 1), ("apt-get", 100)):  # nothing installed; apt cannot reach its mirror
        (fake / tool).write_text(f"#!/bin/sh\nexit {code}\n")
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_LOCAL_STATE": str(tmp_path / "state")}
    up = subprocess.run(["bash", str(ROOT / "tools/slurm-cluster.sh"), "up"], capture_output=True, text=True,
                        env=env, timeout=60)
    if up.returncode == 3:
        pytest.skip(up.stderr.strip())  # this machine's own Slurm configuration: the script stops before apt
    assert up.returncode == 4, up.stdout + up.stderr
    assert up.stderr.strip().splitlines()[-1] == ("[slurm-cluster] cannot install slurmctld slurmd slurm-client "
                                                  "slurmdbd munge mariadb-server: apt-get update failed")


def ci_profile(dest: Path, finetune_minutes: int | str = 30, retries: int | None = None) -> Path:
    """The real profile scaled to the node; `finetune_minutes` may be an expression of `attempt`."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["slurm-init-seconds-before-status-checks"] = 1
    profile["latency-wait"] = 5
    profile["retries"] = retries or profile["retries"]
    profile["default-resources"].update({"mem_mb": 1500, "cpus_per_task": 1})
    training = [rule for rule, resources in profile["set-resources"].items() if "gres" in resources]
    assert sorted(training) == ["finetune", "train_baseline"]
    for rule in training:
        assert profile["set-resources"][rule]["gres"] == "gpu:1", rule  # kept: the gres must reach the training jobs
        minutes = finetune_minutes if rule == "finetune" else 30
        # one thread: the node's two CPUs are shared with the other test worker, and torch's threads wait on each
        # other for a CPU that process holds (a step took up to 45 times as long as alone here)
        profile["set-resources"][rule].update({"cpus_per_task": 1, "mem_mb": 3000, "runtime": minutes})
        profile["set-threads"][rule] = 1
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


SACCT_FIELDS = ["JobID", "Comment", "Partition", "State", "AllocTRES"]


def run_on_slurm(workdir: Path, profile: Path, *args) -> list[dict[str, str]]:
    """Snakemake with the profile; one sacct row (SACCT_FIELDS) per job it submitted, in the order of their ids,
    found by the Slurm job ids the plugin logs (a time window would catch an earlier test's last job too)."""
    run = subprocess.run(["timeout", "-k", "10", "1500", sys.executable, str(ROOT / "tests/snakemake_fast_status.py"),
                          "--profile", str(profile), *args], cwd=workdir, capture_output=True, text=True,
                         env=project_env(workdir))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", run.stdout + run.stderr)
    assert job_ids, run.stderr[-3000:]
    listing = subprocess.run(["sacct", "-n", "-X", "-P", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
    rows = sorted((dict(zip(SACCT_FIELDS, line.split("|"))) for line in listing.splitlines()),
                  key=lambda row: int(row["JobID"]))
    assert [row["JobID"] for row in rows] == sorted(set(job_ids), key=int), (job_ids, rows)  # one row per submission
    return rows


def gres(row: dict[str, str]) -> list[str]:
    """The generic resources Slurm allocated to a job ('gres/gpu=1'), from its AllocTRES."""
    return re.findall(r"gres/[^,]+", row["AllocTRES"])


def states(rows: list[dict[str, str]], comment_prefix: str) -> list[str]:
    """The final state of each submission whose comment starts with `comment_prefix`, in submission order."""
    return [row["State"] for row in rows if row["Comment"].startswith(comment_prefix)]


class AttemptLogs(threading.Thread):
    """The text of each attempt of a job's log. A retry's job opens the rule's log anew (logging's mode "w"), so
    the file is read every 0.2 s and the last text read before it starts over is kept: a retry starts seconds after
    its attempt ended (a status check, a submission, a Snakemake start)."""

    def __init__(self, log: Path):
        super().__init__()
        self.log, self.attempts, self.done = log, [], threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            self.read()
        self.read()

    def read(self):
        try:
            text = self.log.read_text()
        except FileNotFoundError:  # not yet written, or removed before a retry
            return
        if not text:
            return
        if self.attempts and text.startswith(self.attempts[-1]):
            self.attempts[-1] = text
        else:
            self.attempts.append(text)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


# The tiny study cut to one criterion, one seed, one recovery method, one INT4 copy and one export, served to one
# client: every rule still runs, 21 jobs instead of 51.
ONE_OF_EACH = {"seeds": [1], "pruning": {"criteria": ["l1"]}, "finetune": {"methods": ["distill"]},
               "quantize": {"models": ["baseline/dense"]}, "export": {"models": ["int4-baseline/dense"]},
               "benchmark": {"served_clients": [1]}}
CONFIGS = ["--configfile", "config/ci.yaml", "config/one_of_each.yaml"]
CONTROL = "results/models/finetuned/dense-s1"


@pytest.fixture(scope="module")
def study_on_slurm(cluster, tmp_path_factory):
    """The study above through the real profile, run once: (its folder, one sacct row per submission). The tests
    after the first start from copies of it, so that on Slurm only the jobs a test changes run."""
    root = tmp_path_factory.mktemp("slurm")
    workdir = copy_project(root / "study")
    (workdir / "config/one_of_each.yaml").write_text(yaml.safe_dump(ONE_OF_EACH))
    return workdir, run_on_slurm(workdir, ci_profile(root / "profile"), "all", *CONFIGS)


def copy_of_study(study: Path, dest: Path) -> Path:
    shutil.copytree(study, dest, symlinks=True)
    return dest


def test_a_study_on_slurm(study_on_slurm):
    """The real profile's routing and grouping: the training jobs on the GPU partition with the GPU resource, the
    CPU jobs in three group jobs and the benchmark, the local rules on the submitting host: 7 submissions."""
    workdir, rows = study_on_slurm
    assert (workdir / "results/report.html").is_file() and (workdir / "results/rulegraph.dot").is_file()
    assert all(row["State"] == "COMPLETED" for row in rows), rows
    # every submission (two with the same comment would be two rows here), its partition and its generic resources
    submissions = sorted((row["Comment"], row["Partition"], gres(row)) for row in rows)
    assert submissions == sorted([
        ("rule_corpus_prepare_corpus_tokenize_train_tokenizer", "cpu", []),
        ("rule_train_baseline", "gpu", ["gres/gpu=1"]),
        ("rule_pruning_analyze_prune_score_importance", "cpu", []),
        ("rule_finetune_wildcards_dense-s1", "gpu", ["gres/gpu=1"]),
        ("rule_finetune_wildcards_l1-t40-distill-s1", "gpu", ["gres/gpu=1"]),
        ("rule_models_evaluate_export_quantize", "cpu", []),
        ("rule_benchmark", "cpu", []),
    ]), submissions


# The control fine-tune of the study, made long by a wall-clock budget instead of a step count, so that it costs the
# same time on any machine: 105 s of training (`max_minutes`, counted across a resume), past its one-minute time
# limit. slurmctld enforces limits in a periodic check, so the first attempt ends some time after the minute (80 s
# after its start here), always before the budget; the retry trains what is left of it. Only the signal can save
# its state (no periodic state before the end), so a retry can only resume what SIGTERM saved.
LONG_FINETUNE = {"finetune": {"max_minutes": 1.75, "max_steps": 10**6, "max_epochs": 10**4, "eval_every": 10**6,
                              "checkpoint_every": 10**6, "early_stopping_patience": None}}


def test_a_fine_tune_past_its_time_limit_resumes_where_it_stopped(study_on_slurm, tmp_path):
    """Slurm stops the fine-tune at its limit (runtime: 1 minute on the first attempt) with SIGTERM; the loop saves
    its state at the step it is on, the job ends TIMEOUT, Snakemake's retry resumes from that very step and completes
    the curve, every step once. (That a resumed run ends as an uninterrupted one, bit for bit, is asserted after a
    preemption below and after either signal in test_train.py and test_provenance.py.)"""
    workdir = copy_of_study(study_on_slurm[0], tmp_path / "study")
    (workdir / "config/long_finetune.yaml").write_text(yaml.safe_dump(LONG_FINETUNE))
    # the retry gets time to finish: the resources of a retry are evaluated again, with `attempt` in scope
    profile = ci_profile(tmp_path / "profile", finetune_minutes="1 if attempt == 1 else 30", retries=1)
    log = workdir / "logs/finetune/dense-s1.log"
    log.unlink()  # the study's own run of this fine-tune: only the attempts of this test are read
    with AttemptLogs(log) as logs:
        rows = run_on_slurm(workdir, profile, f"{CONTROL}/model.pt", *CONFIGS, "config/long_finetune.yaml")
    assert states(rows, "rule_finetune") == ["TIMEOUT", "COMPLETED"], rows
    assert len(logs.attempts) == 2, [attempt[-500:] for attempt in logs.attempts]
    first, retry = logs.attempts
    stopped = re.search(r"SIGTERM at step (\d+): state saved to (\S+);", first)
    resumed = re.search(r"resumed from (\S+) at step (\d+)", retry)
    assert stopped and resumed and resumed.groups() == stopped.groups()[::-1], (first[-2000:], retry[-2000:])
    assert "wall-clock cap of 1.75 minutes reached" in retry  # the budget ended it, in the retry
    steps = pd.read_csv(workdir / CONTROL / "curve.csv")["step"].tolist()
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > int(stopped.group(1)), (steps[-3:], stopped)


def test_a_training_job_that_holds_a_gpu_it_cannot_see_fails_at_its_start(study_on_slurm, tmp_path):
    """`device: auto` in a job that was granted the profile's gres gpu:1 and sees no CUDA device (this node's GPU is
    a generic resource with nothing behind it, the venv's torch a CPU build) fails at once, in one line, instead of
    training on the CPU while the GPU idles."""
    workdir = copy_of_study(study_on_slurm[0], tmp_path / "study")
    run = subprocess.run(["timeout", "-k", "10", "600", sys.executable, str(ROOT / "tests/snakemake_fast_status.py"),
                          "--profile", str(ci_profile(tmp_path / "profile")), "--retries", "0",
                          "results/models/baseline/dense/model.pt", *CONFIGS, "--config", "device=auto"],
                         cwd=workdir, capture_output=True, text=True, env=project_env(workdir))
    assert run.returncode != 0, run.stdout[-3000:]
    log = (workdir / "logs/train_baseline.log").read_text()
    failure = [line for line in log.splitlines() if " ERROR " in line]
    refusal = (r"failed: RuntimeError: device: auto in a job that holds a GPU, but no CUDA device is visible on host "
               r"\S+ \(CUDA_VISIBLE_DEVICES=\S+, " + NO_CUDA_ADVICE)
    assert failure and re.search(refusal, failure[0]), log[-3000:]
    assert "step 1/" not in log  # it trained nothing


def assert_equals_uninterrupted_run(workdir: Path, reference: Path, configs: list[str]) -> None:
    """The control fine-tuned in `workdir` (resumed) equals, bit for bit, the same fine-tune run locally at once."""
    shutil.copytree(workdir, reference, symlinks=True)
    snakemake(reference, "-f", f"{CONTROL}/model.pt", "--cores", "1", *configs)  # one thread, as on Slurm here
    assert "resumed from" not in (reference / "logs/finetune/dense-s1.log").read_text()
    resumed, uninterrupted = (load_checkpoint(d / CONTROL / "model.pt")[0].state_dict() for d in (workdir, reference))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    curves = [pd.read_csv(d / CONTROL / "curve.csv")[["step", "train_loss", "val_ppl"]] for d in (workdir, reference)]
    pd.testing.assert_frame_equal(*curves)


# Preempted by `scancel --signal=TERM --full` (some sites' preemption) past step 150 of 400, with a periodic state
# every 100 steps (a step takes about 0.06 s here: the signal lands some 10 steps later).
CHECKPOINT_EVERY = 100
PREEMPTED_FINETUNE = {"seeds": [1], "finetune": {"max_steps": 400, "max_epochs": 1000, "eval_every": 200,
                                                 "checkpoint_every": CHECKPOINT_EVERY,
                                                 "early_stopping_patience": None}}
STEP_LINE = re.compile(r"step (\d+)/400 ")
PREEMPT_PAST = 150


def logged_steps(text: str) -> list[int]:
    return [int(m.group(1)) for m in STEP_LINE.finditer(text)]


def preempt_when_past(log: Path, step: int, stop: threading.Event) -> None:
    """Once the fine-tune has logged `step`, signal its whole job (the batch shell and srun too) with SIGTERM."""
    while not stop.wait(0.5):
        if log.is_file() and max(logged_steps(log.read_text()), default=0) >= step:
            jobs = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True).stdout
            for job in (line.split()[0] for line in jobs.splitlines() if "rule_finetune" in line):
                subprocess.run(["scancel", "--signal=TERM", "--full", job], check=True)
            return


def test_a_fine_tune_preempted_with_its_batch_shell_loses_at_most_checkpoint_every_steps(study_on_slurm, tmp_path):
    """SIGTERM to the batch shell and srun as well as the step (`scancel --signal=TERM --full`): srun ends the step
    at once ("forcing job termination"), mostly before the training can finish its step and save, and the job FAILS.
    What is guaranteed: Snakemake's retry resumes from the last state saved (the signal's save when it won the race,
    else the last periodic one, every `checkpoint_every` steps) and ends with the model of an uninterrupted run; at
    most `checkpoint_every` steps of work are lost, counted from the last step the stopped job logged."""
    workdir = copy_of_study(study_on_slurm[0], tmp_path / "study")
    (workdir / "config/preempted.yaml").write_text(yaml.safe_dump(PREEMPTED_FINETUNE))
    configs = [*CONFIGS, "config/preempted.yaml"]
    log = workdir / "logs/finetune/dense-s1.log"
    log.unlink()  # the study's own run of this fine-tune: only the attempts of this test are read
    stop = threading.Event()
    preemption = threading.Thread(target=preempt_when_past, args=(log, PREEMPT_PAST, stop))
    preemption.start()
    try:
        with AttemptLogs(log) as logs:
            rows = run_on_slurm(workdir, ci_profile(tmp_path / "profile", retries=2), f"{CONTROL}/model.pt",
                                *configs)
    finally:
        stop.set()
        preemption.join()
    assert states(rows, "rule_finetune") == ["FAILED", "COMPLETED"], rows
    assert len(logs.attempts) == 2, [attempt[-500:] for attempt in logs.attempts]
    first, retry = logs.attempts
    last_logged = max(logged_steps(first), default=0)  # the stopped job's own last step line (every log_every)
    resumed_at = re.search(r"resumed from \S+ at step (\d+)", retry)
    assert last_logged >= PREEMPT_PAST and resumed_at, (last_logged, retry[-2000:])
    resumed_at = int(resumed_at.group(1))
    # no further than the job got (a signal's save is at most the steps between two log lines past the last one)...
    assert resumed_at <= last_logged + TrainConfig().log_every, (resumed_at, last_logged, first[-2000:])
    # ...and no further back than the last periodic state before it: at most checkpoint_every steps lost
    assert resumed_at >= last_logged - last_logged % CHECKPOINT_EVERY, (resumed_at, last_logged, first[-2000:])
    assert_equals_uninterrupted_run(workdir, tmp_path / "reference", configs)
