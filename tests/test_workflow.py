"""The workflow through Snakemake itself, on the tiny study of config/ci.yaml, in a copy of the project."""

import json
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from conftest import RENAMES, ROOT, copy_project, snakemake

from iteralite import naming

RULES = ["prepare_corpus", "train_tokenizer", "tokenize", "train_baseline", "analyze", "evaluate",
         "score_importance", "prune", "finetune", "quantize", "export", "benchmark", "rulegraph", "summary", "report"]

pytestmark = pytest.mark.slow


def planned_jobs(run) -> set[str]:
    """The jobs a dry run lists, each as its rule and its wildcards' values ('finetune l1-t40-distill-s1',
    'evaluate pruned/l1-t40-s1', 'score_importance l1/2'; 'report' for a rule without wildcards)."""
    text = run.stdout + run.stderr
    if "Nothing to be done" in text:
        return set()
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        wildcards = re.search(r"^    wildcards: (.+)$", block.split("\n\n")[0], re.MULTILINE)
        values = [item.split("=", 1)[1] for item in wildcards.group(1).split(", ")] if wildcards else []
        jobs.add(" ".join([rule, "/".join(values)]).strip())
    return jobs


def test_dry_run_lists_every_rule(tmp_path):
    workdir = copy_project(tmp_path)
    jobs = Counter(job.split()[0] for job in planned_jobs(snakemake(workdir, "all", "-n", "--cores", "2",
                                                                    "--configfile", "config/ci.yaml")))
    assert set(RULES) <= set(jobs), set(RULES) - set(jobs)
    # 2 criteria x 2 seeds pruned; each by 2 methods, plus the control per seed; INT4 of the two quantize.models;
    # those two and their INT4 copies exported (export.models null: one seed per family, here the only one)
    assert jobs["score_importance"] == 4 and jobs["prune"] == 4 and jobs["finetune"] == 10 and jobs["quantize"] == 2
    assert jobs["export"] == 4


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
                "export/int4-finetuned/l1-t40-distill-s1/model.onnx", "export/baseline/dense/step.onnx",
                "export/finetuned/l1-t40-distill-s1/tokenizer.json", "export/int4-baseline/dense/export.json",
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
    assert list(summary.columns) == ["model", "runtime", "stage", "criterion", "target", "method", "seed", "params",
                                     "file_bytes", "test_ppl", "test_tokens", "tokens_per_s", "step_latency_ms",
                                     "family", "peak_mem_mb", "weight_mem_mb", "serve_rss_mb", "int4_path",
                                     "served_clients", "served_tokens_per_s", "served_token_p95_ms"]
    readme_row = next(row for row in (ROOT / "README.md").read_text().splitlines() if row.startswith("| `metrics/summ"))
    named = [name for names in re.findall(r"`([^`]+)`", readme_row.split("|")[2]) for name in names.split(", ")]
    assert named == list(summary.columns)  # the README lists them as they are
    assert (summary["test_tokens"] == 3968).all()  # 62 whole windows of 64 scored tokens within the budget of 4000
    assert not summary[["params", "file_bytes", "test_ppl", "tokens_per_s", "step_latency_ms"]].isna().any().any()
    # one row per model and seed in torch, and one per exported model in ONNX Runtime
    deployed = summary[summary["runtime"] == "onnxruntime"].set_index("model")
    assert sorted(deployed.index) == sorted(EXPORTED) and (deployed["serve_rss_mb"] > 0).all()
    assert (deployed["served_clients"] == 4).all() and (deployed["served_tokens_per_s"] > 0).all()
    summary = summary[summary["runtime"] == "torch"]
    assert sorted(summary["model"]) == sorted(MODELS)
    by = summary.set_index("model")
    # the exports' test perplexity through ONNX Runtime: torch's on the same windows, within 0.1%
    assert ((deployed["test_ppl"] / by.loc[deployed.index, "test_ppl"] - 1).abs() < 1e-3).all()
    assert by.loc["pruned/l1-t40-s1", "params"] < 0.62 * by.loc["baseline/dense", "params"]
    assert by.loc["pruned/l1-t40-s1", "file_bytes"] < 0.65 * by.loc["baseline/dense", "file_bytes"]
    # seeds are repeats: random scores differ per seed, and so do the fine-tunes
    assert by.loc["pruned/random-t40-s1", "test_ppl"] != by.loc["pruned/random-t40-s2", "test_ppl"]
    assert by.loc["finetuned/l1-t40-plain-s1", "test_ppl"] != by.loc["finetuned/l1-t40-plain-s2", "test_ppl"]
    assert by.loc["int4-baseline/dense", "file_bytes"] < 0.25 * by.loc["baseline/dense", "file_bytes"]
    assert by.loc["baseline/dense", "test_ppl"] < 400  # a 1000-token vocabulary: chance is 1000
    assert (summary["family"] == summary["model"].map(lambda m: naming.describe(m)["family"])).all()
    assert by.loc["finetuned/l1-t40-plain-s2", "family"] == "finetuned/l1-t40-plain"


SPEED_COLUMNS = ["tokens_per_s", "step_latency_ms", "peak_mem_mb", "weight_mem_mb", "serve_rss_mb", "int4_path"]


def test_every_export_is_served_over_http_to_each_client_count_with_nothing_lost(study):
    """bench/load.csv: each export's HTTP server, 1 then 4 concurrent clients (config/ci.yaml), 2 streamed
    completions of 8 tokens each per client: every token arrives, no request fails; the report shows them."""
    load = pd.read_csv(study / "results/bench/load.csv")
    assert sorted(zip(load["model"], load["clients"])) == sorted((m, c) for m in EXPORTED for c in (1, 4))
    assert (load["failed"] == 0).all() and (load["requests"] == 2 * load["clients"]).all()
    assert (load["tokens"] == 8 * load["requests"]).all() and (load["server_peak_rss_mb"] > 0).all()
    assert (load["token_p95_ms"] >= load["token_p50_ms"]).all()
    report = (study / "results/report.html").read_text()
    assert "<h2>Serving under load</h2>" in report and "served over HTTP: the baseline's tokens/s" in report


def test_speed_and_memory_are_measured_per_family_and_the_int4_path_named(study):
    """bench/speed.csv times the first seed of each family; summary.csv gives every seed its family's figures:
    weights in memory (float32: 4 bytes a parameter), the peak of one batched forward on top, and for an INT4 model
    the matmul path its benchmark took (the float32 models have none). In ONNX Runtime, an INT4 export holds its
    weights in 4 bits: under a third of its float32 source's export, here where scales and the float rest weigh most."""
    speed = pd.read_csv(study / "results/bench/speed.csv")
    onnx = speed[speed["runtime"] == "onnxruntime"].set_index("model")
    assert sorted(onnx.index) == sorted(EXPORTED) and onnx["peak_mem_mb"].isna().all()
    assert (onnx.loc[[f"int4-{m}" for m in ("baseline/dense", QUANTIZED_TUNE)], "weight_mem_mb"].to_numpy()
            < 0.35 * onnx.loc[["baseline/dense", QUANTIZED_TUNE], "weight_mem_mb"].to_numpy()).all()
    speed = speed[speed["runtime"] == "torch"].set_index("model")
    summary = pd.read_csv(study / "results/metrics/summary.csv")
    summary = summary[summary["runtime"] == "torch"].set_index("model")
    first_seeds = [m for m in summary.index if naming.describe(m)["seed"] in (None, 1)]
    assert sorted(speed.index) == sorted(first_seeds)
    assert (speed["device"] == "cpu").all() and (speed["threads"] == 1).all()
    assert (speed["peak_mem_mb"] > speed["weight_mem_mb"]).all() and (speed["weight_mem_mb"] > 0).all()
    int4 = summary["stage"] == "int4"
    assert int4.sum() == 2 and summary.loc[int4, "int4_path"].isin(["kernel", "unpacked"]).all()
    assert summary.loc[~int4, "int4_path"].isna().all()
    fp32 = summary.loc[~int4]
    assert (fp32["weight_mem_mb"] * 2**20 == 4 * fp32["params"]).all()  # every weight in float32, nothing else
    for model, row in summary.iterrows():
        first = next(m for m in first_seeds if naming.describe(m)["family"] == row["family"])
        pd.testing.assert_series_equal(row[SPEED_COLUMNS], speed.loc[first, SPEED_COLUMNS], check_names=False,
                                       obj=model)


def test_baseline_learned(study):
    curve = pd.read_csv(study / "results/models/baseline/dense/curve.csv")
    assert curve["train_loss"].iloc[-5:].mean() < curve["train_loss"].iloc[:3].mean() - 1.0


def test_report_is_self_contained(study):
    page = (study / "results/report.html").read_text()
    # parameters, importance, kept fractions, curves, recovery, frontier, size, throughput, latency, deployment,
    # serving under load, rule graph, cost
    assert page.count("data:image/png;base64,") == 13
    for section in ("Findings", "Workflow", "Summary", "Targets vs measured", "Parameter distribution", "Importance",
                    "Pruning", "Training", "Size and quality", "Speed", "Deployment", "Serving under load",
                    "Sample generations", "Cost per rule", "Study config"):
        assert f"<h2>{section}</h2>" in page, section
    assert "http://" not in page and "https://" not in page.replace("https://json-schema.org", "")
    assert "(report/targets.yaml)" in page and "<td>at least 10.00x</td>" in page  # the targets, from the repo


def test_up_to_date_study_reruns_nothing_and_report_inputs_rerun_only_report(study):
    assert planned_jobs(snakemake(study, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml")) == set()
    samples = study / "results/bench/samples.json"
    before = samples.stat()
    samples.write_text(json.dumps(json.loads(samples.read_text())))  # same content, newer file
    os.utime(samples, None)
    jobs = planned_jobs(snakemake(study, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml"))
    os.utime(samples, ns=(before.st_atime_ns, before.st_mtime_ns))  # the study stays up to date for other tests
    assert jobs == {"report", "all"}, jobs


def test_bad_config_fails_before_any_job(tmp_path):
    workdir = copy_project(tmp_path)
    (workdir / "bad.yaml").write_text("pruning:\n  criteria: [l1]\n  targets: [0.97]\n")
    run = snakemake(workdir, "all", "--cores", "1", "--configfile", "config/ci.yaml", "bad.yaml", check=False)
    assert run.returncode != 0
    # Snakemake's three lines (docs/design.md, "Configuration"): where, the refusal naming the key, where again
    lines = run.stderr.splitlines()
    refusal = next(i for i, line in enumerate(lines) if line.startswith("invalid config: "))
    assert lines[refusal].startswith("invalid config: pruning.targets: removing 97% of the parameters is infeasible")
    assert re.match(r'WorkflowError in file ".*rules/common\.smk", line \d+:$', lines[refusal - 1]), lines
    assert re.match(r'  File ".*rules/common\.smk", line \d+, in <module>$', lines[refusal + 1]), lines
    assert not (workdir / "results").exists()


def test_a_profile_grouping_an_unknown_rule_fails_before_any_job(tmp_path):
    workdir = copy_project(tmp_path)
    run = snakemake(workdir, "all", "--cores", "1", "--configfile", "config/ci.yaml", "--groups", "evalute=models",
                    check=False)
    assert run.returncode != 0
    assert "invalid profile: groups (profile or --groups) names ['evalute']" in run.stdout + run.stderr
    assert not (workdir / "results").exists()


def same(a, b) -> bool:
    """Two loaded torch files (or parts of them) hold the same values: tensors bit for bit, containers item by item."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_same_config_and_seed_give_identical_numbers(study, tmp_path):
    """The tiny study's first seed run again from nothing in a fresh copy (every stage, both criteria, both methods,
    the control and both INT4 copies; the second seed runs the same code): the same file of every model (every
    tensor, the file size, the pruned and INT4 stats with the kept channels per group), the same training curves,
    and the same perplexity where a model is evaluated from a checkpoint and from an INT4 file: an evaluation of the
    same file gives the same numbers, so the other models' evaluations are not run again."""
    import torch

    workdir = copy_project(tmp_path)
    (workdir / "first_seed.yaml").write_text("seeds: [1]\n")
    models = [m for m in MODELS if naming.describe(m)["seed"] in (None, 1)]
    assert len(models) == 10 and {naming.describe(m)["stage"] for m in models} == {"baseline", "pruned", "finetuned",
                                                                                   "int4"}
    metrics = [f"results/metrics/models/{m}.json" for m in ("baseline/dense", f"int4-{QUANTIZED_TUNE}")]
    snakemake(workdir, *metrics, *(f"results/models/{m}/model.pt" for m in models), "--cores", "2", "--configfile",
              "config/ci.yaml", "first_seed.yaml")

    def both(path):
        return [json.loads((root / path).read_text()) for root in (workdir, study)]

    for path in metrics:
        again, first = both(path)
        assert again == first, path
    for model in models:
        folder = f"results/models/{model}"
        stats = {"pruned": "prune_stats.json", "int4": "quant_stats.json"}.get(naming.describe(model)["stage"])
        if stats:
            again, first = both(f"{folder}/{stats}")
            assert again == first, model
        if naming.describe(model)["stage"] in ("baseline", "finetuned"):
            again, first = (pd.read_csv(d / folder / "curve.csv").drop(columns=["elapsed_s", "tokens_per_s"])
                            for d in (workdir, study))  # the clock's columns aside
            pd.testing.assert_frame_equal(again, first)
        again, first = (d / folder / "model.pt" for d in (workdir, study))
        assert again.stat().st_size == first.stat().st_size, model
        assert same(torch.load(again, weights_only=True), torch.load(first, weights_only=True)), model


def dry_run(workdir, *configfiles):
    run = snakemake(workdir, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml", *configfiles)
    return planned_jobs(run)


# The jobs of the tiny study by name (criteria l1 and random at target 0.4, seeds 1 and 2, methods distill and plain,
# the control per seed, INT4 copies of the baseline and of l1-t40-distill-s1), and the sets a change reruns. A rule
# added to the workflow joins the sets it follows here.
def jobs(rule: str, *names: str) -> set[str]:
    return {f"{rule} {name}" for name in names}


PRUNED = ["l1-t40-s1", "l1-t40-s2", "random-t40-s1", "random-t40-s2"]
DISTILLED = ["l1-t40-distill-s1", "l1-t40-distill-s2", "random-t40-distill-s1", "random-t40-distill-s2"]
PLAIN = ["l1-t40-plain-s1", "l1-t40-plain-s2", "random-t40-plain-s1", "random-t40-plain-s2"]
CONTROLS = ["dense-s1", "dense-s2"]
QUANTIZED_TUNE = "finetuned/l1-t40-distill-s1"  # the one INT4 copy downstream of pruning
MODELS = ["baseline/dense", *(f"pruned/{v}" for v in PRUNED), *(f"finetuned/{v}" for v in DISTILLED + PLAIN + CONTROLS),
          "int4-baseline/dense", f"int4-{QUANTIZED_TUNE}"]
EXPORTED = ["baseline/dense", QUANTIZED_TUNE, "int4-baseline/dense", f"int4-{QUANTIZED_TUNE}"]  # export.models null

REPORTING = {"summary", "report", "all"}
AFTER_FINETUNE = {"benchmark"} | REPORTING


def tuned(*variants: str) -> set[str]:
    """These fine-tunes, their evaluations, the INT4 copy of the quantized one among them, the exports of that one
    and its copy, and what follows."""
    names = [f"finetuned/{v}" for v in variants]
    int4 = [QUANTIZED_TUNE] if QUANTIZED_TUNE in names else []
    return (jobs("finetune", *variants) | jobs("quantize", *int4)
            | jobs("evaluate", *names, *(f"int4-{m}" for m in int4))
            | jobs("export", *int4, *(f"int4-{m}" for m in int4)) | AFTER_FINETUNE)


EVERY_PRUNE = jobs("prune", *PRUNED) | jobs("evaluate", *(f"pruned/{v}" for v in PRUNED)) | tuned(*DISTILLED, *PLAIN)
EVERY_QUANTIZE = (jobs("quantize", "baseline/dense", QUANTIZED_TUNE)
                  | jobs("evaluate", "int4-baseline/dense", f"int4-{QUANTIZED_TUNE}")
                  | jobs("export", "int4-baseline/dense", f"int4-{QUANTIZED_TUNE}") | AFTER_FINETUNE)
EVERY_EXPORT = jobs("export", *EXPORTED) | AFTER_FINETUNE

# The dotted key (as docs/reruns.md's table names it) -> (a change of it, the jobs it reruns). Each set was derived
# by a dry run of the change and checked against what the key reaches.
CONFIG_CHANGES = {
    "benchmark.*": ("benchmark:\n  repeats: 3\n", AFTER_FINETUNE),
    # every model's evaluation and every export (its perplexity is checked on the same windows), nothing upstream
    "evaluate.test_tokens": ("evaluate:\n  test_tokens: 3000\n", jobs("evaluate", *MODELS) | EVERY_EXPORT),
    "export.verify_windows": ("export:\n  verify_windows: 4\n", EVERY_EXPORT),
    # the one export it adds (the others are no longer asked for), and the benchmark that times it
    "export.models": ("export:\n  models: [finetuned/l1-t40-distill-s2]\n",
                      jobs("export", "finetuned/l1-t40-distill-s2") | AFTER_FINETUNE),
    # the 10 fine-tunes (8 variants and the 2 controls) and what follows them
    "finetune.*": ("finetune:\n  lr: 0.002\n", tuned(*DISTILLED, *PLAIN, *CONTROLS)),
    # the distilled fine-tunes only: plain ones and the controls never read the distillation keys
    "finetune.distill_temperature": ("finetune:\n  distill_temperature: 3.0\n", tuned(*DISTILLED)),
    "finetune.distill_weight": ("finetune:\n  distill_weight: 0.5\n", tuned(*DISTILLED)),
    # the new variants only (no INT4 copies: none is named): no retraining, no rescoring, the existing ones untouched
    "pruning.targets": ("pruning:\n  targets: [0.4, 0.3]\n",
                        jobs("prune", *(v.replace("t40", "t30") for v in PRUNED))
                        | jobs("evaluate", *(f"pruned/{v.replace('t40', 't30')}" for v in PRUNED))
                        | tuned(*(v.replace("t40", "t30") for v in DISTILLED + PLAIN))),
    # every prune and what follows; the scores do not depend on the allocation
    "pruning.bounds": ("pruning:\n  bounds:\n    width: 0.45\n", EVERY_PRUNE),
    "pruning.pressure": ("pruning:\n  pressure:\n    ssm_channels: 1.0\n", EVERY_PRUNE),
    "pruning.round_to": ("pruning:\n  round_to:\n    width: 8\n", EVERY_PRUNE),
    "quantize.group_size": ("quantize:\n  group_size: 64\n", EVERY_QUANTIZE),
    "quantize.keep_high_precision": ("quantize:\n  keep_high_precision: [A_log, D, conv1d, norm]\n", EVERY_QUANTIZE),
    # a third seed: its own scores, pruned and fine-tuned models; no benchmark, which times the first seed only
    "seeds": ("seeds: [1, 2, 3]\n",
              (jobs("score_importance", "l1/3", "random/3") | jobs("prune", "l1-t40-s3", "random-t40-s3")
               | jobs("evaluate", "pruned/l1-t40-s3", "pruned/random-t40-s3")
               | tuned("l1-t40-distill-s3", "l1-t40-plain-s3", "random-t40-distill-s3", "random-t40-plain-s3",
                       "dense-s3")) - {"benchmark"}),
}


@pytest.fixture(scope="module")
def config_change_plans(study, tmp_path_factory) -> dict[str, set[str]]:
    """The jobs a dry run of each change lists, two dry runs at a time (each is one Snakemake process, on one core;
    dry runs neither lock the study nor write its metadata)."""
    folder = tmp_path_factory.mktemp("config_changes")

    def plan(key):
        change = folder / f"{key.replace('*', 'all')}.yaml"
        change.write_text(CONFIG_CHANGES[key][0])
        return key, dry_run(study, str(change))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(plan, CONFIG_CHANGES))


@pytest.mark.parametrize("key", CONFIG_CHANGES)
def test_a_config_change_reruns_exactly_what_it_can_change(config_change_plans, key):
    assert config_change_plans[key] == CONFIG_CHANGES[key][1]


# An edit to a package module reruns the rules whose scripts reach it (iteralite.provenance), and what follows; an
# edit to a file a rule declares as an input reruns that rule.
FILE_EDITS = {
    "iteralite/report.py": {"report", "all"},
    "report/targets.yaml": {"report", "all"},
    # analyze and both criteria's scores; the pruned and fine-tuned variants, not the baseline nor the control
    "iteralite/pruning/groups.py": {"analyze"} | jobs("score_importance", "l1/1", "l1/2", "random/1", "random/2")
    | EVERY_PRUNE,
    # an architecture's groups, reached through the registry's facet, as an import
    "iteralite/architectures/itera_lite/groups.py": {"analyze"}
    | jobs("score_importance", "l1/1", "l1/2", "random/1", "random/2") | EVERY_PRUNE,
    "iteralite/bench.py": AFTER_FINETUNE,
    "iteralite/onnxgraph.py": EVERY_EXPORT,
    "iteralite/architectures/selective_scan/onnx.py": EVERY_EXPORT,
    "iteralite/export.py": EVERY_EXPORT,
}


@pytest.mark.parametrize("path", FILE_EDITS)
def test_an_edit_reruns_exactly_the_rules_that_run_or_read_it(study, path):
    source = study / path  # the project copy this study runs (up to date: test_up_to_date_study_reruns_nothing...)
    original, before = source.read_text(), source.stat()
    try:
        source.write_text(original + "\n# an edit\n")
        assert dry_run(study) == FILE_EDITS[path]
    finally:
        source.write_text(original)
    if path.endswith(".py"):
        assert dry_run(study) == set()  # code is tracked by content: the same code again is up to date
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))  # an input is tracked by time: the study stays


def test_every_starred_row_of_the_rerun_table_is_asserted():
    """docs/reruns.md marks with * the rows asserted job for job; every key or file such a row names (outside its
    parentheses) has its change above, and no change above is left unmarked there."""
    table = (ROOT / "docs/reruns.md").read_text().split("| you change |")[1].split("\n\n")[0]
    starred = set()
    for row in table.splitlines()[2:]:
        changed, reruns = row.strip("|").split("|")
        if re.search(r"(^|\s)\*(\s|$)", reruns):
            starred.update(re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", changed)))
    assert starred == set(CONFIG_CHANGES) | set(FILE_EDITS)


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


def test_device_is_a_param_of_every_job_that_computes_with_a_model(study):
    """`device` changed, and one rule at a time allowed to run (with the reporting rules, through which Snakemake
    reaches it; so no job reruns for an upstream one): the jobs whose own params changed are every fine-tune, the
    calibrated scores (not random ones), every evaluation and the benchmark; one-shot pruning, INT4 copies and
    exports run on the CPU whatever the key says."""
    expected = {"finetune": jobs("finetune", *DISTILLED, *PLAIN, *CONTROLS),
                "score_importance": jobs("score_importance", "l1/1", "l1/2"), "evaluate": jobs("evaluate", *MODELS),
                "benchmark": {"benchmark"}, "prune": set(), "quantize": set(), "export": set()}
    for rule, planned in expected.items():
        run = snakemake(study, "all", "-n", "--cores", "2", "--configfile", "config/ci.yaml", "--config",
                        "device=auto", "--allowed-rules", rule, *REPORTING)
        assert {job for job in planned_jobs(run) if job.split()[0] == rule} == planned, rule
