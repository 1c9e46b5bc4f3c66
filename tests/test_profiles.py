"""The Slurm profile's routing, read from profiles/slurm/config.yaml and the rules: checked wherever the tests run
(tests/test_slurm.py runs it on a real cluster, where one can be started)."""

import re

import yaml
from conftest import ROOT

from iteralite import study

PROFILE = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
SOURCES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
RULES = {name for source in SOURCES for name in re.findall(r"^rule (\w+):", source.read_text(), re.MULTILINE)}
TRAINING = {"train_baseline", "finetune"}  # the rules that run the training loop: a GPU each, one submission each


def local_rules() -> set[str]:
    """The rules of every `localrules:` block (one name per line, as the rules files write them)."""
    names = set()
    for source in SOURCES:
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", source.read_text(), re.MULTILINE):
            names.update(re.findall(r"\w+", block))
    return names


def test_the_workflow_rules_are_found():
    assert {"prepare_corpus", "train_baseline", "finetune", "evaluate", "benchmark", "report", "all"} <= RULES


def test_training_rules_go_to_the_gpu_partition_with_one_gpu_and_the_rest_to_the_cpu_partition():
    resources = PROFILE["set-resources"]
    assert PROFILE["default-resources"]["slurm_partition"] == "cpu"
    for rule in TRAINING:
        assert resources[rule]["slurm_partition"] == "gpu" and resources[rule]["gres"] == "gpu:1", rule
        assert PROFILE["set-threads"][rule] == resources[rule]["cpus_per_task"], rule  # torch threads = its CPUs
    others = {rule: r for rule, r in resources.items() if rule not in TRAINING}
    assert not [rule for rule, r in others.items() if "gres" in r or "slurm_partition" in r], others
    assert set(PROFILE["set-threads"]) == TRAINING


def test_the_reporting_rules_run_on_the_submitting_host():
    assert local_rules() == {"rulegraph", "summary", "report"}


def test_every_rule_the_profile_names_is_a_rule_of_the_workflow():
    """A misspelt rule under set-resources or set-threads would silently keep the defaults (a fine-tune on the CPU
    partition); under groups it would leave the rule ungrouped."""
    named = set(PROFILE["set-resources"]) | set(PROFILE["set-threads"]) | set(PROFILE["groups"])
    assert named - RULES == set()
    study.check_groups(PROFILE["groups"], PROFILE["group-components"], RULES)  # what the workflow checks at start


def test_the_cpu_jobs_go_out_in_three_groups_and_the_training_jobs_alone():
    groups = {}
    for rule, group in PROFILE["groups"].items():
        groups.setdefault(group, set()).add(rule)
    assert groups == {"corpus": {"prepare_corpus", "train_tokenizer", "tokenize"},
                      "pruning": {"analyze", "score_importance", "prune"}, "models": {"evaluate", "quantize", "export"}}
    assert not (TRAINING | {"benchmark"} | local_rules()) & set(PROFILE["groups"])  # one submission each, or local
    assert set(PROFILE["group-components"]) == {"pruning", "models"}  # every connected piece in one job


def test_a_timed_out_fine_tune_is_retried():
    """The training rules save their state on SIGTERM and exit 75: Snakemake's retries resume them."""
    assert PROFILE["retries"] == 2 and PROFILE["executor"] == "slurm"
