"""The report's numbers: spread over seeds from the per-seed rows, and the findings written from them."""

import pandas as pd
import pytest

from iteralite import naming, report


def summary(rows: dict[str, float]) -> pd.DataFrame:
    """summary.csv rows from {model: test perplexity}; the baseline has 1000 parameters, pruned models 600."""
    frame = []
    for model, ppl in rows.items():
        described = naming.describe(model)
        frame.append({"model": model, **described, "params": 1000 if "dense" in model else 600,
                      "file_bytes": 4000 if described["stage"] != "int4" else 400, "test_ppl": ppl,
                      "tokens_per_s": 100.0})
    return pd.DataFrame(frame)


STUDY = summary({
    "baseline/dense": 80.0,
    "finetuned/taylor-t40-distill-s1": 82.0, "finetuned/taylor-t40-distill-s2": 83.0,
    "finetuned/random-t40-distill-s1": 86.0, "finetuned/random-t40-distill-s2": 88.0,
    "finetuned/taylor-t40-plain-s1": 82.5, "finetuned/taylor-t40-plain-s2": 84.5,
    "finetuned/dense-s1": 79.0, "finetuned/dense-s2": 81.0,
    "int4-finetuned/taylor-t40-distill-s1": 84.0, "int4-finetuned/taylor-t40-distill-s2": 84.0,
})


def test_family_spread_comes_from_the_per_seed_rows():
    families = report.family_stats(STUDY).set_index("family")
    taylor = families.loc["finetuned/taylor-t40-distill"]
    assert taylor["seeds"] == 2 and taylor["test_ppl"] == 82.5
    assert taylor["ppl_sd"] == pytest.approx(0.7071, abs=1e-4)  # sample standard deviation of 82 and 83
    assert (taylor["ppl_min"], taylor["ppl_max"]) == (82.0, 83.0)
    assert families.loc["baseline/dense", "seeds"] == 1 and families.loc["baseline/dense", "ppl_sd"] == 0


def test_findings_say_which_differences_exceed_the_spread():
    text = report.findings(report.family_stats(STUDY))
    assert text[0].startswith("Best recovery: taylor (distill, t40) reaches test perplexity 82.50 ± 0.71 (2 seeds), "
                              "+3.1% against the baseline's 80.00, with 60% of its parameters.")
    random = next(line for line in text if line.startswith("random"))
    assert "every seed of one beats every seed of the other: the difference exceeds the spread" in random
    plain = next(line for line in text if "recovered by plain" in line)
    assert "84.5" not in plain and "83.50 ± 1.41" in plain and "within the spread" in plain
    control = next(line for line in text if line.startswith("The dense control"))
    assert "80.00 ± 1.41 (2 seeds), +0.0%: extra training alone does not improve" in control
    assert "+3.1% against it; every seed of one beats every seed of the other" in control
    assert text[-1] == ("Its INT4 copy is 10.0x smaller than the fp32 baseline file at test perplexity 84.00 ± 0.00 "
                        "(2 seeds), +5.0%.")


def test_findings_compare_schedules_of_the_same_size():
    study = summary({"baseline/dense": 80.0, "finetuned/taylor-t40-distill-s1": 82.0,
                     "finetuned/taylor-t40-distill-s2": 82.2, "finetuned/taylor-t40k3-distill-s1": 81.0,
                     "finetuned/taylor-t40k3-distill-s2": 81.1})
    text = report.findings(report.family_stats(study))
    assert text[0].startswith("Best recovery: taylor (distill, t40k3)")
    assert "taylor (distill) at the same size as t40: 82.10 ± 0.14 (2 seeds), +2.6%; every seed of one beats" in text[1]


@pytest.mark.parametrize("methods, advice", [
    (["distill", "plain"], "plain fine-tuning recovers best here: finetuned/taylor-t40-plain reaches 10.25 ± 0.35 "
                           "(2 seeds)"),
    (["distill"], "recovery by plain fine-tuning, which does not inherit the baseline's fit, is not in this study: "
                  "add plain to finetune.methods"),
])
def test_a_baseline_that_does_not_fit_the_corpus_is_said_first_with_the_control_as_reference(methods, advice):
    """An imported model trained on other text: the control (fine-tuned alone) far below the baseline."""
    rows = {"baseline/dense": 910.0, "finetuned/dense-s1": 2.3, "finetuned/dense-s2": 2.4}
    for method, ppl in (("distill", 10.5), ("plain", 10.0)):
        if method in methods:
            rows |= {f"finetuned/taylor-t40-{method}-s1": ppl, f"finetuned/taylor-t40-{method}-s2": ppl + 0.5}
    text = report.findings(report.family_stats(summary(rows)))
    assert text[0].startswith("The baseline does not fit this corpus: fine-tuning it alone (the dense control) takes "
                              "its test perplexity from 910.00 to 2.35, so a figure against the baseline mostly "
                              f"measures that training. Distillation copies the baseline, fit and all; {advice}. "
                              "Against the control, the fair reference here, the best pruned model "
                              "(finetuned/taylor-t40-")
    assert text[0].endswith("-plain) is +336.2%." if "plain" in methods else "-distill) is +357.4%.")
    assert not report.findings(report.family_stats(STUDY))[0].startswith("The baseline does not fit")


def test_targets_are_met_by_the_best_recipe_mean():
    table = report.targets_vs_measured(report.family_stats(STUDY),
                                       [{"figure": "ppl", "at_most": 0.03, "key": "ppl_pruned"},
                                        {"figure": "ppl", "at_most": 0.05, "key": "ppl_pruned"},
                                        {"figure": "size", "at_least": 1.5, "key": "size_int4"}])
    assert table["measured"].tolist()[:2] == ["+3.1%", "+3.1%"] and table["met"].tolist()[:2] == ["no", "yes"]
    assert table.iloc[0]["target"] == "at most +3.0%" and table.iloc[0]["model (mean over seeds)"] == (
        "finetuned/taylor-t40-distill")
    assert table.iloc[2]["target"] == "at least 1.50x"


def test_the_control_target_compares_with_the_dense_fine_tune_not_the_baseline():
    study = summary({"baseline/dense": 80.0, "finetuned/taylor-t40-distill-s1": 82.0,
                     "finetuned/taylor-t40-distill-s2": 83.0, "finetuned/dense-s1": 84.0, "finetuned/dense-s2": 86.0})
    table = report.targets_vs_measured(report.family_stats(study),
                                       [{"figure": "control", "at_most": 0.0, "key": "ppl_vs_control"}])
    assert table.iloc[0][["measured", "met"]].tolist() == ["-2.9%", "yes"]  # 82.5 against the control's 85.0


def test_tables_print_human_units_and_never_nan():
    frame = pd.DataFrame({"model": ["baseline/dense", "pruned/l1-t40-s1"], "seed": pd.array([None, 1], dtype="Int64"),
                          "params": [1988768, 1185152], "file_bytes": [7994644, 4780116],
                          "tokens_per_s": [14200.0, 21000.0], "test_ppl": [82.5029, float("nan")]})
    shown = report.display(frame)
    assert list(shown.columns) == ["model", "seed", "parameters", "file (MB)", "throughput (k tokens/s)",
                                   "test perplexity"]
    assert shown.iloc[0].tolist() == ["baseline/dense", "", "1,988,768", "7.99", "14.2", "82.50"]
    assert shown.iloc[1].tolist() == ["pruned/l1-t40-s1", "1", "1,185,152", "4.78", "21.0", ""]


DOT = """digraph snakemake_dag {
\t0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
\t1[label = "report", color = "0.38 0.6 0.85", style="rounded"];
\t2[label = "train", color = "0.48 0.6 0.85", style="rounded"];
\t3[label = "corpus", color = "0.14 0.6 0.85", style="rounded"];
\t1 -> 0
\t2 -> 1
\t3 -> 1
\t3 -> 2
}"""


def test_rule_graph_is_read_from_snakemakes_dot_and_layered_by_longest_path():
    from iteralite import rulegraph

    nodes, edges = rulegraph.parse_dot(DOT)
    assert nodes == {"0": "all", "1": "report", "2": "train", "3": "corpus"}
    assert ("3", "1") in edges and len(edges) == 4
    assert rulegraph.layers(nodes, edges) == {"3": 0, "2": 1, "1": 2, "0": 3}  # report after train, not beside it
    assert "<figure><img" in report.rulegraph_plot(DOT)


def test_the_plans_breakdown_stands_beside_the_measured_one_for_the_plans_model():
    import yaml

    from iteralite.architectures.itera_lite.config import Config
    from iteralite.architectures.models import build_model
    from iteralite.study import SCHEMA

    with open(SCHEMA.replace("config/schema.yaml", "report/targets.yaml"), encoding="utf-8") as f:
        plan = yaml.safe_load(f)["plan_breakdown"]
    from iteralite import analysis

    plans_model = analysis.analyze(build_model(Config()))
    table = report.category_table(plans_model, plan).set_index("category")
    assert table.loc["embeddings", "params"] == "1,024,000" == table.loc["embeddings", "plan's params"]
    assert table.loc["SSM blocks", "plan's params"] == "~400,000" and table.loc["SSM blocks", "params"] == "678,944"
    smaller = analysis.analyze(build_model(Config(vocab_size=100, d_model=16, d_inner=32, max_seq=16)))
    assert "plan's params" not in report.category_table(smaller, plan).columns


LOAD = pd.DataFrame([
    {"model": m, "clients": c, "requests": 4 * c, "failed": 0, "tokens": 128 * c, "seconds": 1.0,
     "tokens_per_s": rate, "token_p50_ms": 1.0 * c, "token_p95_ms": 2.0 * c, "server_peak_rss_mb": 140.0}
    for m, c, rate in [("baseline/dense", 1, 500.0), ("baseline/dense", 32, 3000.0),
                       ("int4-finetuned/taylor-t40-distill-s1", 1, 600.0),
                       ("int4-finetuned/taylor-t40-distill-s1", 32, 4800.0), ("int4-baseline/dense", 32, 9000.0)]])


def test_serving_targets_take_the_baseline_and_the_fastest_pruned_export_at_the_most_clients():
    figures = report.served_figures(LOAD)
    assert figures["served_scaling"] == (6.0, "baseline/dense")  # 3000 / 500
    assert figures["served_compressed"] == (1.6, "int4-finetuned/taylor-t40-distill-s1")  # not the unpruned INT4
    line = report.load_findings(LOAD)[0]
    assert line == ("baseline/dense: 500 tokens/s with 1 client(s), 3000 with 32 (6.0x); time per token p50/p95 "
                    "1.00/2.00 ms with 1, 32.00/64.00 ms with 32; the server's peak RSS 140 MB; 0 of 132 requests "
                    "failed.")
