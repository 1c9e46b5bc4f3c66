"""Bad configs are refused at parse time, before any job runs, with the key named."""

import copy
import json

import pytest
import yaml

from iteralite import naming, study
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


class Delete:
    """The key removed instead of given a value (its repr names it in the test ids, the same in every process)."""

    def __repr__(self):
        return "deleted"


DELETE = Delete()

# (dotted key, bad value, the start of the error): every refusal begins with the dotted key it names
BAD = [
    ("seed", "abc", "seed: 'abc' is not of type 'integer'"),
    ("tokenizer.vocab_size", 100, "tokenizer.vocab_size: 100 is less than the minimum of 257"),
    ("tokenizer.vocab_size", 8000.5, "tokenizer.vocab_size: 8000.5 is not of type 'integer'"),
    ("model.d_model", 0, "model.d_model: 0 is less than the minimum of 1"),
    ("model.n_layers", "four", "model.n_layers: 'four' is not of type 'integer'"),
    ("model.top_k", 5, "model.top_k=5 exceeds model.n_experts=4"),
    ("model.unknown_key", 3, "model.unknown_key: not a key of model"),
    ("model.checkpoint", "/nonexistent/base.pt", "model.checkpoint: file not found: /nonexistent/base.pt"),
    ("corpus.source", "web", "corpus.source: 'web' is not one of ['embedded', 'files', 'hub']"),
    ("corpus.source", "files", "corpus.paths must list at least one file"),
    ("corpus.paths", ["/nonexistent/corpus.txt"], "corpus.paths: file not found: /nonexistent/corpus.txt"),
    ("corpus.split", {"mode": "tail", "validation": 0.7, "test": 0.05},
     "corpus.split.validation: 0.7 is greater than or equal to the maximum of 0.5"),
    ("train.lr", -1, "train.lr: -1 is less than or equal to the minimum of 0"),
    ("train.batch_size", 0, "train.batch_size: 0 is less than the minimum of 1"),
    ("train.max_steps", DELETE, "train: needs a budget: set train.max_steps, train.max_tokens or train.max_epochs"),
    ("pruning.criteria", ["l1", "magic"], "pruning.criteria[1]: 'magic' is not one of"),
    ("pruning.criteria", [], "pruning.criteria: [] should be non-empty"),
    ("pruning.targets", [1.5], "pruning.targets[0]: 1.5 matches none of its forms"),
    ("pruning.targets", [0.95], "pruning.targets: removing 95% of the parameters is infeasible"),
    ("pruning.targets", ["moonshot"], "pruning.targets[0]: 'moonshot' matches none of its forms"),
    ("pruning.bounds", {"width": 1.2}, "pruning.bounds.width: 1.2 is greater than or equal to the maximum of 1"),
    ("pruning.round_to", {"width": 0}, "pruning.round_to.width: 0 is less than the minimum of 1"),
    ("quantize.group_size", 48, "quantize.group_size: 48 is not one of [32, 64, 128]"),
    ("quantize.models", ["finetuned/nonexistent-t40"], "quantize.models: 'finetuned/nonexistent-t40' names no model"),
    ("finetune.distill_weight", 2, "finetune.distill_weight: 2 is greater than the maximum of 1"),
    ("benchmark.threads", 0, "benchmark.threads: 0 is less than the minimum of 1"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_config_is_refused_naming_the_key(path, value, expected):
    config = with_change(path, value)
    if path == "corpus.paths":
        config["corpus"]["source"] = "files"
    with pytest.raises(ConfigError) as err:
        study.check(config)
    assert str(err.value).startswith(expected), str(err.value)


def test_a_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"^tokenizer\.vocab_size: missing \(a required key\)$"):
        study.check(with_change("tokenizer.vocab_size", DELETE))
    with pytest.raises(ConfigError, match=r"^seed: missing"):
        study.check(with_change("seed", DELETE))
    with pytest.raises(ConfigError, match=r"^colour: not a key of the config \(its keys: benchmark, corpus, device"):
        study.check({**copy.deepcopy(DEFAULT), "colour": "blue"})


def test_every_schema_description_is_one_string():
    """A description with a comma in a YAML flow mapping must be quoted, or YAML splits it into stray keys."""
    with open(study.SCHEMA, encoding="utf-8") as f:
        schema = yaml.safe_load(f)

    def stray(node, path):
        if isinstance(node, list):
            return [s for i, item in enumerate(node) for s in stray(item, f"{path}[{i}]")]
        if not isinstance(node, dict):
            return []
        found = [f"{path}.{k}" for k, v in node.items() if v is None and k != "default"]
        return found + [s for k, v in node.items() for s in stray(v, f"{path}.{k}")]

    assert stray(schema, "schema") == []


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
    assert list(study.pruned_variants(merged)) == ["l1-t40-s1", "l1-t40-s2", "random-t40-s1", "random-t40-s2"]


def grid(**changes):
    config = copy.deepcopy(DEFAULT)
    config["pruning"].update(criteria=["taylor", "random"], targets=[0.4])
    config.update(seeds=[1, 2])
    config["finetune"].update(methods=["distill", "plain"], control=True, distill_weight=1.0)
    config["pruning"]["schedules"] = [1]
    for key, value in changes.items():
        section, _, name = key.partition("__")
        config[section][name] = value
    return config


def test_the_grid_is_criteria_x_targets_x_seeds_then_methods():
    config = grid()
    assert list(study.pruned_variants(config)) == ["taylor-t40-s1", "taylor-t40-s2", "random-t40-s1",
                                                   "random-t40-s2"]
    tuned = study.finetuned_variants(config)
    assert list(tuned)[:2] == ["taylor-t40-distill-s1", "taylor-t40-plain-s1"]
    assert tuned["random-t40-plain-s2"] == {"criterion": "random", "target": 0.4, "steps": 1, "seed": 2,
                                            "method": "plain", "source": "pruned/random-t40-s2"}
    assert tuned["dense-s2"]["source"] == "baseline/dense" and tuned["dense-s2"]["method"] == "plain"
    assert len(tuned) == 4 * 2 + 2
    models = study.all_models(config)
    assert models[0] == "baseline/dense" and "int4-finetuned/taylor-t40-plain-s2" in models
    # speed is measured once per family (the first seed): the architecture is the same for every seed
    assert "finetuned/taylor-t40-distill-s1" in study.benchmarked_models(config)
    assert not [m for m in study.benchmarked_models(config) if m.endswith("-s2")]


def test_a_schedule_in_steps_is_its_own_variant():
    config = grid(pruning__schedules=[1, 3])
    assert list(study.pruned_variants(config))[:4] == ["taylor-t40-s1", "taylor-t40-s2", "taylor-t40k3-s1",
                                                       "taylor-t40k3-s2"]
    assert study.variant(config, "pruned", "random-t40k3-s2")["steps"] == 3
    assert "finetuned/taylor-t40k3-distill-s1" in study.all_models(config)
    assert naming.describe("finetuned/taylor-t40k3-distill-s1")["target"] == "t40k3"


def test_quantize_models_names_a_model_a_family_or_all():
    assert study.quantized_sources(grid(quantize__models=["finetuned/taylor-t40-distill"])) == [
        "finetuned/taylor-t40-distill-s1", "finetuned/taylor-t40-distill-s2"]
    assert study.quantized_sources(grid(quantize__models=["finetuned/dense-s2"])) == ["finetuned/dense-s2"]
    with pytest.raises(ConfigError, match="quantize.models: 'finetuned/l1-t40' names no model of the study"):
        study.quantized_sources(grid(quantize__models=["finetuned/l1-t40"]))


def test_distillation_needs_a_weight():
    with pytest.raises(ConfigError, match="finetune.methods lists distill, so finetune.distill_weight must be > 0"):
        study.validate(grid(finetune__distill_weight=0.0))


def test_unknown_variant_names_the_study_variants():
    with pytest.raises(ConfigError, match="unknown finetuned variant 'taylor-t40-s1'"):
        study.variant(grid(), "finetuned", "taylor-t40-s1")


def test_model_names_encode_their_recipe():
    assert naming.describe("int4-finetuned/taylor-t12p5-distill-s3") == {
        "stage": "int4", "criterion": "taylor", "target": "t12p5", "method": "distill", "seed": 3,
        "family": "int4-finetuned/taylor-t12p5-distill"}
    assert naming.describe("finetuned/dense-s2")["method"] == "plain"
    assert naming.describe("baseline/dense") == {"stage": "baseline", "criterion": "dense", "target": "",
                                                 "method": "", "seed": None, "family": "baseline/dense"}
    assert naming.target_label(0.125) == "t12p5" and naming.target_label("plan") == "plan"


# Snakemake re-parses the workflow in every job it submits to Slurm: parsing must not pay torch's import.
PARSE_ONLY = """
import sys
from snakemake.cli import main
try:
    main(["all", "-n", "--cores", "1", "--quiet"])
except SystemExit as end:
    assert end.code == 0, end.code
heavy = ("torch", "numba", "tokenizers", "datasets", "matplotlib")
print("heavy modules:", sorted(m for m in heavy if m in sys.modules))
"""


def test_parsing_the_workflow_imports_no_torch(tmp_path):
    import subprocess
    import sys

    from conftest import copy_project, project_env

    workdir = copy_project(tmp_path)
    run = subprocess.run([sys.executable, "-c", PARSE_ONLY], cwd=workdir, capture_output=True, text=True,
                         env=project_env(workdir), timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "heavy modules: []" in run.stdout, run.stdout


def test_profile_groups_must_name_rules_and_groups_of_the_workflow():
    rules = {"evaluate", "quantize", "finetune"}
    study.check_groups({"evaluate": "models", "quantize": "models"}, {"models": 100}, rules)
    with pytest.raises(ConfigError, match=r"groups \(profile or --groups\) names \['evalute'\], not rules"):
        study.check_groups({"evalute": "models"}, {}, rules)
    with pytest.raises(ConfigError, match=r"group-components .* names \['model'\], which no rule is grouped into"):
        study.check_groups({"evaluate": "models"}, {"model": 100}, rules)


def corpus_of(*paths, text_field="text") -> dict:
    config = with_change("corpus.source", "files")
    config["corpus"] |= {"paths": [str(p) for p in paths], "text_field": text_field}
    return config


def test_corpus_files_are_read_as_far_as_their_first_bytes_when_the_workflow_is_parsed(tmp_path):
    """Type, encoding and text field are refused before any job runs, each naming the key and the file."""
    import pandas as pd

    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "book.txt").write_text("It was a dark and stormy night.\n")
    (tmp_path / "notes.csv").write_text("text\nhello\n")
    (tmp_path / "body.jsonl").write_text('{"body": "one story"}\n{"body": "two"}\n')
    (tmp_path / "fake.parquet").write_text("not parquet")
    pd.DataFrame({"body": ["one story"]}).to_parquet(tmp_path / "body.parquet")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    # a blank line, then a first record longer than the head the parse reads; a record holding U+2028
    (tmp_path / "long.jsonl").write_text("\n" + json.dumps({"text": "x" * 70_000}) + "\n")
    (tmp_path / "separator.jsonl").write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n")
    refusals = [
        (corpus_of(tmp_path / "latin1.txt"), f"corpus.paths: {tmp_path / 'latin1.txt'} is not UTF-8 text "
                                             "(invalid continuation byte at byte 3)"),
        (corpus_of(tmp_path / "notes.csv"), f"corpus.paths: unsupported file type '.csv' ({tmp_path / 'notes.csv'})"),
        (corpus_of(tmp_path / "book.txt", tmp_path / "body.jsonl"),
         "corpus.paths: files of types .jsonl, .txt in one corpus"),
        (corpus_of(tmp_path / "body.jsonl"), f"corpus.text_field 'text' is not a key of the first record of "
                                             f"{tmp_path / 'body.jsonl'} (its keys: ['body'])"),
        (corpus_of(tmp_path / "body.parquet"), f"corpus.text_field 'text' is not a column of "
                                               f"{tmp_path / 'body.parquet'} (columns: ['body'])"),
        (corpus_of(tmp_path / "fake.parquet"), f"corpus.paths: {tmp_path / 'fake.parquet'} is not a Parquet file"),
        (corpus_of(tmp_path / "blank.jsonl"), f"corpus.paths: {tmp_path / 'blank.jsonl'} holds no JSON record"),
    ]
    for config, expected in refusals:
        with pytest.raises(ConfigError) as err:
            study.check(config)
        assert str(err.value).startswith(expected), str(err.value)
    for good in (corpus_of(tmp_path / "book.txt"), corpus_of(tmp_path / "body.jsonl", text_field="body"),
                 corpus_of(tmp_path / "body.parquet", text_field="body"), corpus_of(tmp_path / "long.jsonl"),
                 corpus_of(tmp_path / "separator.jsonl")):
        study.check(good)


def test_the_parse_reads_corpus_files_without_torch_or_datasets(tmp_path):
    import subprocess
    import sys

    (tmp_path / "book.jsonl").write_text('{"text": "It was a dark and stormy night."}\n')
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(corpus_of(tmp_path / "book.jsonl")))
    code = ("import sys, yaml\nfrom iteralite import study\n"
            "study.check(yaml.safe_load(open(sys.argv[1])))\n"
            "print(sorted(m for m in ('torch', 'datasets') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.yaml")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "[]\n", run.stderr


def test_a_checkpoint_of_other_sizes_than_the_model_section_is_refused_when_parsed(tiny_model, tmp_path):
    from iteralite.architectures.models import build_model
    from iteralite.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "base.pt", tiny_model, "sha")
    config = with_change("model.checkpoint", str(tmp_path / "base.pt"))
    with pytest.raises(ConfigError, match=rf"^model\.checkpoint {tmp_path / 'base.pt'} does not match the config's "
                                          rf"model \(found, config\): \{{'architecture': "
                                          rf"\('selective_scan', 'itera_lite'\), "
                                          rf"'vocab_size': \({tiny_model.cfg.vocab_size}, 8000\), "
                                          rf"'d_model': \({tiny_model.cfg.d_model}, 128\)"):
        study.check(config)
    save_checkpoint(tmp_path / "same.pt", build_model(study.model_config(DEFAULT)), "sha")
    study.check(with_change("model.checkpoint", str(tmp_path / "same.pt")))  # the tokenizer is checked in the job


def test_config_files_merge_key_by_key_as_snakemake_merges_them():
    """The benchmarks' command lines (`config/config.yaml config/selective_scan.yaml`) give the study Snakemake runs."""
    merged = study.merged_config([study.SCHEMA.replace("schema.yaml", "config.yaml"),
                                  study.SCHEMA.replace("schema.yaml", "selective_scan.yaml")])
    assert merged["model"]["architecture"] == "selective_scan" and merged["model"]["d_model"] == 128
    assert merged["train"]["lr"] == 0.003 and merged["train"]["max_steps"] == DEFAULT["train"]["max_steps"]
    assert study.model_config(merged).architecture == "selective_scan"
