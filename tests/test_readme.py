"""The README and docs stay true: every make target, config key, file and test they name exists, the job and
submission counts they give are the workflow's, and a table shown twice is the same table."""

import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def test_every_make_target_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README)) | set(re.findall(r"^\s+make ([a-z][a-z-]*)", README,
                                                                                flags=re.M))
    assert named and named <= targets, named - targets


def test_every_config_key_in_the_readme_exists():
    """Keys are checked against the schema, which lists every key (config.yaml leaves some to their defaults)."""
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)*)`", README))
    keys = [k for k in named if k.split(".")[0] in schema["properties"]]
    assert len(keys) >= 15
    for key in keys:
        node = schema
        for part in key.split("."):
            if "$ref" in node:  # '#/$defs/<name>'
                node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
            assert part in node.get("properties", {}), f"README names config key {key}, which the schema lacks"
            node = node["properties"][part]


def test_the_readme_is_short_and_links_docs_that_exist():
    assert len(README.splitlines()) <= 220
    for doc in re.findall(r"docs/[a-z]+\.(?:md|png)", README):
        assert (ROOT / doc).is_file(), doc


# a path of the repository as the docs write it: a top-level folder of the checkout, then a file name
REPO_PATH = re.compile(r"\b((?:iteralite|tools|tests|config|docs|report|profiles|envs|rules|scripts)/[\w./-]*\w"
                       r"|requirements(?:-cuda)?\.lock|Makefile|Snakefile)(?:::(\w+))?")


def test_every_file_and_test_the_docs_name_exists():
    """Paths with a placeholder (`<variant>`, `{a,b}`) or under results/ are outputs, not files of the checkout."""
    named = 0
    for doc, text in DOCS.items():
        for path, test in REPO_PATH.findall(text):
            assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"
            if test:
                assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), flags=re.M), f"{doc}: {path}::{test}"
            named += 1
    assert named > 100


def planned_jobs(tmp_path, *config: str) -> dict[str, int]:
    """rule -> jobs of a dry run of the default study (plus `config` files) in a copy of the workflow."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "rules", "scripts", "config", "report", "profiles", "envs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--cores", "1", "--quiet", "rules",
                          "--configfile", "config/config.yaml", *config], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", run.stdout + run.stderr, flags=re.M)}


@pytest.mark.slow
def test_the_job_and_submission_counts_the_docs_give_are_the_workflows(tmp_path):
    jobs = planned_jobs(tmp_path / "default")
    total = jobs.pop("total")
    assert f"{total} jobs" in DOCS["results.md"] and jobs["export"] == 4 and "(4 exports)" in DOCS["deploy.md"]
    local = re.search(r"^localrules:\n((?:\s+\w+,\n)+)", (ROOT / "rules/report.smk").read_text(), flags=re.M)
    local = set(re.findall(r"\w+", local.group(1))) | {"all"}
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    one_per_job = sum(count for rule, count in jobs.items() if rule not in local)
    grouped = set(profile["groups"])
    submissions = len(set(profile["groups"].values())) + sum(
        count for rule, count in jobs.items() if rule not in local | grouped)
    assert (one_per_job, submissions) == (49, 11)
    for text in (DOCS["slurm.md"], (ROOT / "profiles/slurm/config.yaml").read_text()):
        assert "11 submissions" in text and f"{one_per_job}" in text
    (tmp_path / "every.yaml").write_text(
        "export:\n  models: [baseline/dense, finetuned/all, int4-baseline/dense, int4-finetuned/all]\n")
    every = planned_jobs(tmp_path / "every", str(tmp_path / "every.yaml"))
    assert f"would make {every['export']} export jobs instead of 4" in DOCS["deploy.md"]


def markdown_rows(text: str, header: str) -> list[str]:
    """The rows of the Markdown table that starts with `header`."""
    table = text.split(header, 1)[1].split("\n\n", 1)[0]
    return [line for line in table.splitlines()[1:] if line.startswith("| ") and "---" not in line]


def test_the_readme_table_is_the_default_studys_own():
    """Both print `python tools/study_table.py` (the README a selection of its families) from one study's
    summary.csv: every row the README shows is in docs/results.md, as it is there."""
    header = "| model (family) | runtime |"
    shown, full = markdown_rows(README, header), markdown_rows(DOCS["results.md"], header)
    assert len(shown) >= 5 and set(shown) <= set(full), set(shown) - set(full)
