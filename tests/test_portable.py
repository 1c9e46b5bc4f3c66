"""A finished study moved, copied or mounted elsewhere is still up to date: no rule's input, output, params or code
digest names the directory of the checkout (docs/reruns.md). On the tiny study of config/ci.yaml."""

import base64
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import snakemake

pytestmark = pytest.mark.slow

JOB = re.compile(r"^(?:local)?rule (\w+):\n((?: {4}.*\n)*)", re.MULTILINE)
OUTPUT = re.compile(r"^ {4}output: (.*)$", re.MULTILINE)

# Settings only the distilled fine-tunes read: 4 fine-tunes, one INT4 copy, their evaluations and what follows.
ONE_KEY = "finetune:\n  distill_temperature: 3.0\n"


def planned(run) -> set[tuple[str, str]]:
    """The jobs of a dry run, each as (rule, its outputs); empty when there is nothing to do."""
    text = run.stdout + run.stderr
    assert "Nothing to be done" in text or "Job stats:" in text, text[-4000:]
    return {(rule, m.group(1) if (m := OUTPUT.search(block)) else "") for rule, block in JOB.findall(text)}


def dry_run(workdir, *configfiles, package=None):
    """`snakemake all -n` of the tiny study in `workdir`; its jobs import the package in `package` (default: the
    copy in `workdir`)."""
    args = ["all", "-n", "--cores", "2", "--configfile", "config/ci.yaml", *map(str, configfiles)]
    if package is None:
        return planned(snakemake(workdir, *args))
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(package)})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return planned(run)


def test_a_moved_study_reruns_nothing_and_a_change_there_reruns_what_it_reruns_here(study, tmp_path):
    moved = tmp_path / "scratch" / "renamed"
    shutil.copytree(study, moved, symlinks=True)  # with .snakemake/ and the times of every file, as `cp -a` copies
    assert dry_run(moved) == set()
    (tmp_path / "change.yaml").write_text(ONE_KEY)
    here = dry_run(study, tmp_path / "change.yaml")
    rules = {"finetune", "quantize", "evaluate", "export", "benchmark", "summary", "report", "all"}
    assert {rule for rule, _ in here} == rules
    assert dry_run(moved, tmp_path / "change.yaml") == here  # the same jobs, output for output


def test_a_copy_of_a_study_without_the_package_reruns_nothing(study, tmp_path):
    """The package installed elsewhere (here: the original study's copy) and the workflow copied without it."""
    copy = tmp_path / "workflow-only"
    shutil.copytree(study, copy, symlinks=True, ignore=lambda d, names: ["iteralite"] if d == str(study) else [])
    assert not (copy / "iteralite").exists()
    assert dry_run(copy, package=study) == set()


def test_no_record_of_a_finished_study_names_its_directory(study):
    """Snakemake's record of every output (inputs, params, code, checksums) holds no path of the checkout."""
    records = [r for r in (study / ".snakemake" / "metadata").rglob("*") if r.is_file()]
    assert len(records) > 50
    checkout = {str(study), str(study.resolve())}
    leaks = [base64.urlsafe_b64decode(r.name).decode() for r in records if any(p in r.read_text() for p in checkout)]
    assert not leaks, leaks


def test_the_study_plans_from_another_working_directory(study, tmp_path):
    """`--directory`: the workflow's own files are found beside the Snakefile, and no job's input names them."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    run = snakemake(study, "all", "-n", "--cores", "2", "--snakefile", str(study / "Snakefile"), "--directory",
                    str(workdir), "--configfile", str(study / "config/config.yaml"), str(study / "config/ci.yaml"))
    jobs = planned(run)
    assert {rule for rule, _ in jobs} >= {"prepare_corpus", "rulegraph", "report"} and len(jobs) == 51  # all of them
    inputs = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("    input: ")]
    assert inputs and not [line for line in inputs if str(study) in line]
