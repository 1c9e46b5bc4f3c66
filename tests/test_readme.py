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
    assert f"{submissions} submissions (corpus, baseline, pruning, six fine-tunes, models, benchmark) where one job " \
           f"per submission would make {one_per_job}" in " ".join(DOCS["slurm.md"].split())
    assert f"{submissions} submissions instead of {one_per_job}" in (ROOT / "profiles/slurm/config.yaml").read_text()
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


def test_the_layout_names_every_tool_and_module():
    layout = DOCS["design.md"].split("## Layout", 1)[1].split("\n\n", 2)[1]
    words = set(re.findall(r"[\w.-]+", layout))
    tools = {path.name for path in (ROOT / "tools").iterdir() if path.is_file()}
    modules = {path.stem for path in (ROOT / "iteralite").glob("*.py")} - {"__init__"}
    assert tools <= words, tools - words
    assert {m for m in modules if m not in words and f"{m}.py" not in words} == set()


def test_the_deployment_targets_quote_the_figures_printed_above_them():
    """docs/deploy.md's table of targets takes every measured ratio from the block tools/deployment_figures.py
    printed just above it."""
    figures = DOCS["deploy.md"].split("## Figures", 1)[1]
    block, after = figures.split("```", 2)[1:]
    rows = {}
    for line in block.splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"[\w./-]+", cells[0]) and all(c.endswith("x") for c in cells[1:]) and cells[1:]:
            rows.setdefault(cells[0], []).append([float(c[:-1]) for c in cells[1:]])
    ratios, int4 = {m: r[0] for m, r in rows.items()}, {m: r[1] for m, r in rows.items() if len(r) > 1}
    exports = re.search(r"export jobs \(s, with start-up\): (.*)", block).group(1)
    seconds = [float(s) for s in re.findall(r" (\d+\.\d)", exports)]
    table = {row.split("|")[1].strip(): row.split("|")[3].strip()
             for row in markdown_rows(after, "| figure | target |")}

    def span(values, fmt):
        return f"{fmt.format(min(values))}-{fmt.format(max(values))}"

    taylor = "int4-finetuned/taylor-t40-distill-s1"
    expected = {
        "latency per token, ONNX Runtime / torch, every exported model": span([r[0] for r in ratios.values()],
                                                                               "{:.3f}") + "x",
        "INT4 Taylor distilled in ONNX Runtime / the torch float32 baseline, latency": f"{ratios[taylor][3]:.3f}x",
        "the same: batched tokens/s": ", ".join(f"{v[2]:.2f}x" for v in int4.values()),
        "batched tokens/s, ONNX Runtime / torch, the same model": span([r[1] for r in ratios.values()], "{:.2f}") + "x",
        "pruned + INT4 in ONNX Runtime / the torch float32 baseline, tokens/s": f"{ratios[taylor][2]:.2f}x",
        "serving process peak RSS, INT4 Taylor distilled: ONNX Runtime / torch": f"{ratios[taylor][4]:.3f}x",
        "export and verification of one default-size model, on 2 cores": span(seconds, "{:.1f}") + " s",
    }
    for figure, quoted in expected.items():
        assert table[figure].startswith(quoted), (figure, table[figure], quoted)
    weights = table["INT4 / its float32 source, both in ONNX Runtime: weights"]
    assert all(f"{v[0]:.3f}x" in weights for v in int4.values()), weights
    latency = table["the same: latency per token"]
    assert all(f"{v[1]:.3f}x" in latency for v in int4.values()), latency


def test_the_readme_figures_in_words_are_those_of_its_table():
    rows = {(row.split("|")[1].strip(), row.split("|")[2].strip()): row.split("|")
            for row in markdown_rows(README, "| model (family) | runtime |")}

    def mean_ppl(family):
        return sum(map(float, rows[(family, "torch")][6].split(","))) / len(rows[(family, "torch")][6].split(","))

    below = 1 - mean_ppl("finetuned/taylor-t40-distill") / mean_ppl("finetuned/dense")
    assert f"end {below:.1%} below the dense control" in README
    smaller = rows[("int4-finetuned/taylor-t40-distill", "torch")][5].strip()
    assert f"their INT4 copies are {smaller}\nsmaller" in README or f"their INT4 copies are {smaller} smaller" in README
