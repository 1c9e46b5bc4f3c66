"""Bad configs are refused at parse time, before any job runs, with the key named."""

import copy

import pytest
import yaml

from iteralite import study
from iteralite.study import ConfigError

with open(study.SCHEMA.replace("schema.yaml", "config.yaml"), encoding="utf-8") as f:
    DEFAULT = yaml.safe_load(f)


def with_change(path: str, value):
    config = copy.deepcopy(DEFAULT)
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return config


DELETE = object()

BAD = [
    ("seed", "abc", "seed"),
    ("tokenizer.vocab_size", 100, "vocab_size"),
    ("tokenizer.vocab_size", 8000.5, "vocab_size"),
    ("model.d_model", 0, "d_model"),
    ("model.n_layers", "four", "n_layers"),
    ("model.top_k", 5, "model.top_k=5 exceeds model.n_experts=4"),
    ("model.unknown_key", 3, "unknown_key"),
    ("model.checkpoint", "/nonexistent/base.pt", "model.checkpoint: file not found"),
    ("corpus.source", "web", "source"),
    ("corpus.source", "files", "corpus.paths must list at least one file"),
    ("corpus.paths", ["/nonexistent/corpus.txt"], None),  # with source files, below
    ("corpus.split", {"mode": "tail", "validation": 0.7, "test": 0.05}, "validation"),
    ("train.lr", -1, "lr"),
    ("train.batch_size", 0, "batch_size"),
    ("train.max_steps", DELETE, "max_steps"),
    ("pruning.criteria", ["l1", "magic"], "magic"),
    ("pruning.criteria", [], "criteria"),
    ("pruning.targets", [1.5], "targets"),
    ("pruning.targets", [0.95], "pruning.targets: removing 95% of the parameters is infeasible"),
    ("pruning.targets", ["moonshot"], "targets"),
    ("pruning.bounds", {"width": 1.2}, "width"),
    ("pruning.round_to", {"width": 0}, "width"),
    ("quantize.group_size", 48, "group_size"),
    ("quantize.models", ["finetuned/nonexistent-t40"], "quantize.models"),
    ("finetune.distill_weight", 2, "distill_weight"),
    ("benchmark.threads", 0, "threads"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_config_is_refused_naming_the_key(path, value, expected):
    config = with_change(path, value)
    if path == "corpus.paths":
        config["corpus"]["source"] = "files"
        expected = "corpus.paths: file not found: /nonexistent/corpus.txt"
    with pytest.raises(Exception) as err:
        study.check(config)
    assert expected in str(err.value), str(err.value)
    assert isinstance(err.value, ConfigError) or "Error validating config" in str(err.value)


def test_group_size_must_divide_width():
    config = with_change("model.d_model", 96)
    config["quantize"]["group_size"] = 64
    with pytest.raises(ConfigError, match="quantize.group_size=64 must divide model.d_model=96"):
        study.check(config)


def test_default_and_ci_configs_are_valid():
    study.check(copy.deepcopy(DEFAULT))
    with open(study.SCHEMA.replace("schema.yaml", "ci.yaml"), encoding="utf-8") as f:
        ci = yaml.safe_load(f)
    merged = copy.deepcopy(DEFAULT)
    for key, value in ci.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    study.check(merged)
    assert study.variants(merged) == ["l1-t40", "random-t40"]


def test_grid_and_models():
    assert study.variants(DEFAULT) == ["l1-t40", "taylor-t40", "random-t40"]
    models = study.all_models(DEFAULT)
    assert models[0] == "baseline/dense" and "finetuned/dense" in models and "int4-finetuned/taylor-t40" in models
    assert study.target_label(0.125) == "t12p5" and study.target_label("plan") == "plan"
