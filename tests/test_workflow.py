"""The workflow through Snakemake itself, on the tiny study of config/ci.yaml, in a copy of the project."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import RENAMES, ROOT, copy_project, snakemake

RULES = ["prepare_corpus", "train_tokenizer", "tokenize", "train_baseline", "analyze", "evaluate",
         "score_importance", "prune", "finetune", "quantize", "benchmark", "rulegraph", "summary", "report"]

pytestmark = pytest.mark.slow


def planned_jobs(run) -> dict:
    """Job counts from a dry run's 'Job stats' table."""
    text = run.stdout + run.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    jobs = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def test_dry_run_lists_every_rule(tmp_path):
    workdir = copy_project(tmp_path)
    jobs = planned_jobs(snakemake(workdir, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml"))
    assert set(RULES) <= set(jobs), set(RULES) - set(jobs)
    # 2 criteria x 2 seeds pruned; each by 2 methods, plus the control per seed; INT4 of the two quantize.models
    assert jobs["score_importance"] == 4 and jobs["prune"] == 4 and jobs["finetune"] == 10 and jobs["quantize"] == 2


def test_lint_is_clean():
    run = snakemake(ROOT, "--lint", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Congratulations" in run.stdout + run.stderr


def test_every_artifact_is_produced(study):
    results = study / "results"
    expected = ["corpus/stats.json", "tokenizer/tokenizer.json", "tokens/tokens.pt", "analysis/params.json",
                "analysis/params.csv", "analysis/groups.csv", "models/baseline/dense/model.pt",
                "models/baseline/dense/curve.csv", "importance/l1-s1.pt", "importance/random-s2.csv",
                "models/pruned/l1-t40-s2/prune_stats.json", "models/finetuned/dense-s1/model.pt",
                "models/int4-finetuned/l1-t40-distill-s1/quant_stats.json", "bench/speed.csv", "bench/latency.csv",
                "bench/samples.json", "metrics/summary.csv", "report.html"]
    missing = [p for p in expected if not (results / p).is_file()]
    assert not missing
    for rule in ("train_baseline", "report"):
        assert (study / "logs" / f"{rule}.log").is_file() and (study / "benchmarks" / f"{rule}.tsv").is_file()


def test_every_artifact_is_renamed_into_place(study):
    """Every file the study wrote under results/ reached its path by a rename from a temporary file beside it
    (iteralite.artifacts): a job killed mid-write leaves no output a rerun takes as complete. The study's processes
    recorded every rename they made (tests/rename_audit); a file written in place has none."""
    renames = [line.split("\t") for f in (study / RENAMES).glob("*.tsv") for line in f.read_text().splitlines()]
    renamed = {Path(target).resolve() for source, target in renames
               if Path(source).parent == Path(target).parent and Path(source).name.startswith(f".{Path(target).name}.")
               and source.endswith(".tmp")}
    artifacts = [path for path in (study / "results").rglob("*") if path.is_file()]
    assert {"tokens.pt", "model.pt", "summary.csv", "rulegraph.dot", "report.html"} <= {p.name for p in artifacts}
    assert [str(path.relative_to(study)) for path in artifacts if path.resolve() not in renamed] == []


def test_summary_has_a_complete_row_per_model(study):
    summary = pd.read_csv(study / "results/metrics/summary.csv")
    assert list(summary.columns[:12]) == ["model", "stage", "criterion", "target", "method", "seed", "params",
                                          "file_bytes", "test_ppl", "test_tokens", "tokens_per_s", "step_latency_ms"]
    assert (summary["test_tokens"] == 3968).all()  # 62 whole windows of 64 scored tokens within the budget of 4000
    assert len(summary) == 17 and summary["model"].is_unique  # one row per model and seed
    assert not summary[["params", "file_bytes", "test_ppl", "tokens_per_s", "step_latency_ms"]].isna().any().any()
    by = summary.set_index("model")
    assert by.loc["pruned/l1-t40-s1", "params"] < 0.62 * by.loc["baseline/dense", "params"]
    assert by.loc["pruned/l1-t40-s1", "file_bytes"] < 0.65 * by.loc["baseline/dense", "file_bytes"]
    # seeds are repeats: random scores differ per seed, and so do the fine-tunes
    assert by.loc["pruned/random-t40-s1", "test_ppl"] != by.loc["pruned/random-t40-s2", "test_ppl"]
    assert by.loc["finetuned/l1-t40-plain-s1", "test_ppl"] != by.loc["finetuned/l1-t40-plain-s2", "test_ppl"]
    assert by.loc["int4-baseline/dense", "file_bytes"] < 0.25 * by.loc["baseline/dense", "file_bytes"]
    assert by.loc["baseline/dense", "test_ppl"] < 400  # a 1000-token vocabulary: chance is 1000


def test_baseline_learned(study):
    curve = pd.read_csv(study / "results/models/baseline/dense/curve.csv")
    assert curve["train_loss"].iloc[-5:].mean() < curve["train_loss"].iloc[:3].mean() - 1.0


def test_report_is_self_contained(study):
    page = (study / "results/report.html").read_text()
    # parameters, importance, kept fractions, curves, recovery, frontier, size, throughput, latency, rule graph, cost
    assert page.count("data:image/png;base64,") == 11
    for section in ("Findings", "Workflow", "Summary", "Plan vs measured", "Parameter distribution", "Importance",
                    "Pruning", "Training", "Size and quality", "Speed", "Sample generations", "Cost per rule",
                    "Study config"):
        assert f"<h2>{section}</h2>" in page, section
    assert "http://" not in page and "https://" not in page.replace("https://json-schema.org", "")
    assert "Source: Phase 7, Task 2 plan" in page and "<td>2.37x</td>" in page  # the plan's figures, from the repo


def test_up_to_date_study_reruns_nothing_and_report_inputs_rerun_only_report(study):
    assert planned_jobs(snakemake(study, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml")) == {}
    samples = study / "results/bench/samples.json"
    before = samples.stat()
    samples.write_text(json.dumps(json.loads(samples.read_text())))  # same content, newer file
    os.utime(samples, None)
    jobs = planned_jobs(snakemake(study, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml"))
    os.utime(samples, ns=(before.st_atime_ns, before.st_mtime_ns))  # the study stays up to date for other tests
    assert set(jobs) == {"report", "all"}, jobs


def test_bad_config_fails_before_any_job(tmp_path):
    workdir = copy_project(tmp_path)
    (workdir / "bad.yaml").write_text("pruning:\n  criteria: [l1]\n  targets: [0.97]\n")
    run = snakemake(workdir, "all", "--cores", "1", "--configfile", "config/ci.yaml", "bad.yaml", check=False)
    assert run.returncode != 0
    assert "pruning.targets: removing 97% of the parameters is infeasible" in run.stdout + run.stderr
    assert not (workdir / "results").exists()


def test_a_profile_grouping_an_unknown_rule_fails_before_any_job(tmp_path):
    workdir = copy_project(tmp_path)
    run = snakemake(workdir, "all", "--cores", "1", "--configfile", "config/ci.yaml", "--groups", "evalute=models",
                    check=False)
    assert run.returncode != 0
    assert "invalid profile: groups (profile or --groups) names ['evalute']" in run.stdout + run.stderr
    assert not (workdir / "results").exists()


def test_same_config_and_seed_give_identical_numbers(study, tmp_path):
    """The baseline branch of the tiny study, run again in a fresh copy, gives the same metrics and weights."""
    import torch

    workdir = copy_project(tmp_path)
    target = "results/metrics/models/baseline/dense.json"
    snakemake(workdir, target, "--cores", "2", "--configfile", "config/ci.yaml")
    assert json.loads((workdir / target).read_text()) == json.loads((study / target).read_text())
    a = torch.load(workdir / "results/models/baseline/dense/model.pt", weights_only=True)["state_dict"]
    b = torch.load(study / "results/models/baseline/dense/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def dry_run(workdir, *configfiles):
    run = snakemake(workdir, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml", *configfiles)
    return planned_jobs(run)


AFTER_FINETUNE = {"benchmark": 1, "summary": 1, "report": 1, "all": 1}

# The tiny study: criteria l1 and random at target 0.4, seeds 1 and 2, methods distill and plain, the control per
# seed, INT4 copies of the baseline and of l1-t40-distill-s1.
CONFIG_CHANGES = {
    "benchmark:\n  repeats: 3\n": AFTER_FINETUNE,
    # every model's evaluation, nothing upstream
    "evaluate:\n  test_tokens: 3000\n": {"evaluate": 17, "summary": 1, "report": 1, "all": 1},
    # 10 fine-tunes (8 variants and the 2 controls), the INT4 copy of one, evaluation of all 11
    "finetune:\n  lr: 0.002\n": {"finetune": 10, "quantize": 1, "evaluate": 11, **AFTER_FINETUNE},
    # the distilled fine-tunes only: plain ones and the controls never read the temperature
    "finetune:\n  distill_temperature: 3.0\n": {"finetune": 4, "quantize": 1, "evaluate": 5, **AFTER_FINETUNE},
    # the new variants only (no INT4 copies: none is named): no retraining, no rescoring, the existing ones untouched
    "pruning:\n  targets: [0.4, 0.3]\n": {"prune": 4, "finetune": 8, "evaluate": 12, **AFTER_FINETUNE},
    # every prune and what follows; the scores do not depend on the allocation
    "pruning:\n  pressure:\n    ssm_channels: 1.0\n": {"prune": 4, "finetune": 8, "quantize": 1, "evaluate": 13,
                                                       **AFTER_FINETUNE},
    "quantize:\n  group_size: 64\n": {"quantize": 2, "evaluate": 2, **AFTER_FINETUNE},
    # a third seed: its own scores, pruned and fine-tuned models; speed is measured on the first seed only
    "seeds: [1, 2, 3]\n": {"score_importance": 2, "prune": 2, "finetune": 5, "evaluate": 7,
                           "summary": 1, "report": 1, "all": 1},
}


@pytest.mark.parametrize("change", CONFIG_CHANGES)
def test_a_config_change_reruns_exactly_what_it_can_change(study, tmp_path, change):
    (tmp_path / "change.yaml").write_text(change)
    assert dry_run(study, str(tmp_path / "change.yaml")) == CONFIG_CHANGES[change]


# An edit to a package module reruns the rules whose scripts reach it (iteralite.provenance), and what follows.
CODE_EDITS = {
    "report.py": {"report": 1, "all": 1},
    # analyze and both criteria's scores; the pruned and fine-tuned variants, not the baseline nor the control
    "pruning/groups.py": {"analyze": 1, "score_importance": 4, "prune": 4, "finetune": 8, "quantize": 1,
                          "evaluate": 13, **AFTER_FINETUNE},
    "bench.py": AFTER_FINETUNE,
}


@pytest.mark.parametrize("module", CODE_EDITS)
def test_a_code_edit_reruns_exactly_the_rules_that_run_it(study, module):
    source = study / "iteralite" / module  # the package copy this study runs
    original = source.read_text()
    assert dry_run(study) == {}
    try:
        source.write_text(original + "\n# an edit\n")
        assert dry_run(study) == CODE_EDITS[module]
    finally:
        source.write_text(original)
    assert dry_run(study) == {}  # code is tracked by content: the same code again is up to date


def test_user_files_a_job_reads_are_its_inputs(study, tmp_path):
    """A user corpus and a user baseline checkpoint appear as inputs of the jobs that read them."""
    corpus = tmp_path / "book.txt"
    corpus.write_text("It was a dark and stormy night. " * 2000)
    user_checkpoint = tmp_path / "baseline.pt"
    shutil.copy(study / "results/models/baseline/dense/model.pt", user_checkpoint)
    (tmp_path / "user.yaml").write_text(
        f"corpus:\n  source: files\n  paths: [{corpus}]\nmodel:\n  checkpoint: {user_checkpoint}\n")
    run = snakemake(study, "results/models/baseline/dense/model.pt", "-n", "--cores", "1", "--configfile",
                    "config/ci.yaml", str(tmp_path / "user.yaml"))
    text = run.stdout + run.stderr
    assert f"input: {corpus}" in text
    assert str(user_checkpoint) in text.split("rule train_baseline:")[1].split("output:")[0]
