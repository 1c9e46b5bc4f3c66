"""The study as a grid: variant names, the models of the DAG, and checks of a config beyond its JSON Schema.

Everything here runs when Snakemake parses the workflow, before any job starts, so bad input fails at once.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from functools import cache

from . import corpusfiles, naming
from .architectures import ITERA_LITE_FILES, ModelConfig, facet, study_architecture
from .architectures.configs import config_class, differences
from .paths import EMBEDDED_CORPUS
from .pruning.planner import PlanError, plan_target


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


def model_config(config: dict) -> ModelConfig:
    """The model the study starts from: an imported Itera-Lite checkpoint's (`model.checkpoint`), else the model
    section's sizes for its architecture (the default's when unnamed), its vocabulary the tokenizer's."""
    try:
        config_type = config_class(study_architecture(config["model"]))  # a former name is refused even for an import
    except ValueError as err:
        raise ConfigError(str(err)) from None
    checkpoint = config["model"].get("checkpoint")
    imported = imported_config(checkpoint, config["model"].get("top_k")) if checkpoint else None
    if imported is not None:  # its table may have rows the tokenizer's ids never reach
        rows = tokenizer_rows(config["tokenizer"]) if config["tokenizer"].get("path") else imported.vocab_size
        return dataclasses.replace(imported, vocab_reachable=rows if rows < imported.vocab_size else 0,
                                   max_seq=min(imported.max_seq, config["model"]["max_seq"]))
    values = {k: v for k, v in config["model"].items() if k not in ("checkpoint", "architecture")}
    values["vocab_size"] = tokenizer_rows(config["tokenizer"])
    sizes = [field.name for field in dataclasses.fields(config_type)]
    foreign = sorted(set(values) - set(sizes))
    if foreign:
        raise ConfigError(f"model.{foreign[0]} is not a size of model.architecture {config_type.architecture} "
                          f"(its sizes: {', '.join(sizes)})")
    try:
        return config_type.from_dict(values)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def imported_config(path: str, top_k: int | None) -> ModelConfig | None:
    """The config of an Itera-Lite checkpoint named by model.checkpoint (None for this package's own checkpoints,
    which must match the model section)."""
    cfg, file_format = checkpoint_config(path, top_k)
    return cfg if file_format == "Itera-Lite" else None


def checkpoint_config(path: str, top_k: int | None) -> tuple[ModelConfig, str]:
    """(its model's config, its format) of the file model.checkpoint names, read in full (the Itera-Lite
    architecture's convert.py: no code runs, every tensor checked) when the workflow is parsed, so torch is
    imported only then."""
    if not os.path.isfile(path):
        raise ConfigError(f"model.checkpoint: file not found: {path}")
    stat = os.stat(path)
    return _read_checkpoint_config(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, top_k)


@cache
def _read_checkpoint_config(path: str, size: int, mtime: int, top_k: int | None) -> tuple[ModelConfig, str]:
    from .artifacts import CheckpointError

    try:
        model, info = facet(ITERA_LITE_FILES, "convert").read_user_checkpoint(path, top_k)
    except CheckpointError as err:
        message = str(err)
        raise ConfigError(message if message.startswith("model.checkpoint") else f"model.checkpoint: {message}") \
            from None
    return model.cfg, info["format"]


def tokenizer_rows(tokenizer: dict) -> int:
    """Rows of the embedding table the study's tokenizer needs: a user tokenizer's ids (tokenizer.path), else the
    BPE's tokenizer.vocab_size."""
    if not tokenizer.get("path"):
        return tokenizer["vocab_size"]
    reader = facet(ITERA_LITE_FILES, "tokenizer")
    try:
        return reader.id_count(reader.read_tokenizer(tokenizer["path"])[0])
    except (reader.TokenizerError, UnicodeDecodeError) as err:
        raise ConfigError(str(err) if isinstance(err, reader.TokenizerError) else
                          f"tokenizer.path {tokenizer['path']} is not UTF-8 text") from None


def corpus_files(corpus: dict) -> list[str]:
    """The user's files prepare_corpus reads for the config's corpus section, as the config names them: its declared
    inputs (none for the embedded corpus or a hub dataset)."""
    return list(corpus["paths"]) if corpus["source"] == "files" else []


def shipped_corpus(corpus: dict) -> list:
    """The embedded corpus when the config reads it: data of the package, tracked by content like its code
    (`provenance.package_files_digest`), not as an input that would record where the checkout lies."""
    return [EMBEDDED_CORPUS] if corpus["source"] == "embedded" else []


def merged_config(paths: list[str]) -> dict:
    """Config files merged key by key, later ones winning, as Snakemake merges `--configfile` files (the
    benchmarks' command lines: `config/config.yaml config/selective_scan.yaml`)."""
    import yaml

    config: dict = {}

    def merge(into: dict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for path in paths:
        with open(path, encoding="utf-8") as f:
            merge(config, yaml.safe_load(f) or {})
    return config


def config_slice(config: dict, keys, drop=()) -> dict:
    """The given dotted keys of `config` (and nothing else), in the config's own nested shape, keys sorted at every
    level, minus the dotted keys in `drop`. A rule's params are such slices: Snakemake reruns a job when a param's
    value changes, so a rule must receive exactly the keys that change its output."""
    sliced: dict = {}
    for key in keys:
        value, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(f"config has no key {'.'.join(parts[: i + 1])}")
            value = value[part]
        node = sliced
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)  # `drop` must never edit the config itself
    for key in drop:
        *parents, last = key.split(".")
        node = sliced
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return _sorted(sliced)


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def importance_keys(config: dict, criterion: str) -> list[str]:
    """The config keys a criterion's scores depend on (never the targets; the seed comes with the file name). Every
    criterion but random reads calibration batches, on the config's device: blocks are scored by the loss their
    skipping causes."""
    if criterion == "random":
        return []
    return ["pruning.expert_criterion", "pruning.calibration_batches", "train.batch_size", "train.aux_loss_weight",
            "device"]


def pruned_variants(config: dict) -> dict[str, dict]:
    """Pruned variant name -> its criterion, target, schedule (steps) and seed: every criterion x target x schedule
    x seed. A preset target ('plan') is an allocation, pruned in one shot."""
    p = config["pruning"]
    return {
        naming.pruned_variant(c, t, s, k): {"criterion": c, "target": t, "steps": k, "seed": s}
        for c in p["criteria"] for t in p["targets"] for k in (p["schedules"] if not isinstance(t, str) else [1])
        for s in config["seeds"]
    }


def finetuned_variants(config: dict) -> dict[str, dict]:
    """Fine-tuned variant name -> its recipe: every pruned variant x recovery method, plus per seed the control (the
    baseline fine-tuned plainly with the same budget) when enabled. 'source' names the model it starts from."""
    tuned = {}
    for name, variant in pruned_variants(config).items():
        for method in config["finetune"]["methods"]:
            tuned[naming.finetuned_variant(name, method)] = {**variant, "method": method, "source": f"pruned/{name}"}
    if config["finetune"]["control"]:
        for seed in config["seeds"]:
            tuned[naming.control_variant(seed)] = {"criterion": "dense", "target": None, "steps": 0, "seed": seed,
                                                   "method": "plain", "source": "baseline/dense"}
    return tuned


def variant(config: dict, stage: str, name: str) -> dict:
    """The recipe of a pruned or fine-tuned variant; unknown names fail with the study's names."""
    grid = pruned_variants(config) if stage == "pruned" else finetuned_variants(config)
    if name not in grid:
        raise ConfigError(f"unknown {stage} variant {name!r}; the study has {sorted(grid)}")
    return grid[name]


def plan_for(config: dict, target) -> dict:
    p = config["pruning"]
    try:
        return plan_target(model_config(config), target, p["bounds"], p["round_to"], p["pressure"])
    except PlanError as err:
        raise ConfigError(str(err)) from None


def quantized_sources(config: dict) -> list[str]:
    """'stage/variant' of every model that gets an INT4 copy. An item names a model, a family (all its seeds) or all
    models of a stage."""
    sources = []
    for item in config["quantize"]["models"]:
        if item.startswith("int4-"):
            raise ConfigError(f"quantize.models: {item!r} must be baseline/dense, pruned/<variant|all> or "
                              f"finetuned/<variant|all>")
        sources += [m for m in _named_models(config, "quantize.models", item) if m not in sources]
    return sources


def _named_models(config: dict, key: str, item: str) -> list[str]:
    """The models an item of `key` names: 'baseline/dense', '<stage>/<variant>', '<stage>/<family>' (all its seeds)
    or '<stage>/all', stage among pruned and finetuned; an int4-<stage>/... item names INT4 copies the same way."""
    stage, _, name = item.partition("/")
    copies = stage.startswith("int4-")
    base = stage.removeprefix("int4-")
    if base == "baseline" and name == "dense":
        names = ["dense"]
    elif base in ("pruned", "finetuned"):
        grid = pruned_variants(config) if base == "pruned" else finetuned_variants(config)
        names = [n for n in grid if name in ("all", n, naming.split_seed(n)[0])]
    else:
        allowed = "baseline/dense, pruned/<variant|all> or finetuned/<variant|all>"
        raise ConfigError(f"{key}: {item!r} must be {allowed}" + (", or int4- before one of these" if copies else ""))
    if not names:
        raise ConfigError(f"{key}: {item!r} names no model of the study ({base}: {sorted(grid)})")
    return [f"{stage}/{n}" for n in names]


def is_control(model: str) -> bool:
    """A model that exists to be compared with: pruned by random importance, or the dense fine-tune."""
    recipe = naming.describe(model)
    return recipe["criterion"] == "random" or (recipe["stage"] == "finetuned" and recipe["criterion"] == "dense")


def exported_models(config: dict) -> list[str]:
    """'stage/variant' of every model the export rule writes to ONNX. By default (export.models null): one seed of
    each family that gets an INT4 copy, and that copy, the controls left out (random importance, the dense
    fine-tune), which exist to be compared, not shipped; the seeds of a family share one architecture, so their
    deployed speed and memory are the same, and exporting every seed would only repeat them (docs/deploy.md)."""
    items = config["export"]["models"]
    if items is None:
        first = config["seeds"][0]
        sources = [m for m in quantized_sources(config) if naming.describe(m)["seed"] in (None, first)
                   and not is_control(m)]
        return sources + [f"int4-{m}" for m in sources]
    quantized = {f"int4-{s}" for s in quantized_sources(config)}
    models = []
    for item in items:
        for model in _named_models(config, "export.models", item):
            if model.startswith("int4-") and model not in quantized:
                raise ConfigError(f"export.models: {item!r} names {model}, which has no INT4 copy (quantize.models "
                                  f"gives: {sorted(quantized)})")
            if model not in models:
                models.append(model)
    return models


def all_models(config: dict) -> list[str]:
    """Every model of the DAG as 'stage/variant' (int4 copies as 'int4-<stage>/<variant>')."""
    models = ["baseline/dense"]
    models += [f"pruned/{v}" for v in pruned_variants(config)]
    models += [f"finetuned/{v}" for v in finetuned_variants(config)]
    models += [f"int4-{s}" for s in quantized_sources(config)]
    return models


def benchmarked_models(config: dict) -> list[str]:
    """The models the speed benchmark times: one seed per family (the seeds of a family share one architecture, so
    their speed is the same; summary.csv gives every seed its family's speed), and every exported model (timed in
    torch beside its export in ONNX Runtime)."""
    first = config["seeds"][0]
    exported = exported_models(config)
    return [m for m in all_models(config) if naming.describe(m)["seed"] in (None, first) or m in exported]


def validate(config: dict) -> None:
    """Checks the JSON Schema cannot express; raises ConfigError naming the key."""
    cfg = model_config(config)
    if cfg.top_k > cfg.n_experts:
        raise ConfigError(f"model.top_k={cfg.top_k} exceeds model.n_experts={cfg.n_experts}")
    corpus = config["corpus"]
    if corpus["source"] == "files":
        try:
            corpusfiles.check_files(corpus.get("paths") or [], corpus["text_field"])
        except corpusfiles.CorpusFileError as err:
            raise ConfigError(str(err)) from None
    if corpus["source"] == "hub" and not corpus.get("hub_name"):
        raise ConfigError("corpus.hub_name must name a dataset when corpus.source is 'hub'")
    _check_import(config, cfg)
    group = config["quantize"]["group_size"]
    if cfg.d_model % group:
        raise ConfigError(f"quantize.group_size={group} must divide model.d_model={cfg.d_model}")
    for key in ("train", "finetune"):
        if config[key]["batch_size"] < 1:
            raise ConfigError(f"{key}.batch_size must be >= 1")
    for target in config["pruning"]["targets"]:
        plan_for(config, target)
    finetune = config["finetune"]
    if "distill" in finetune["methods"] and finetune["distill_weight"] <= 0:
        raise ConfigError("finetune.methods lists distill, so finetune.distill_weight must be > 0 (the weight of "
                          "the distillation loss); it is 0")
    quantized_sources(config)
    exported_models(config)


def _check_import(config: dict, cfg: ModelConfig) -> None:
    """A user's checkpoint: one of this package's has the model section's sizes; an Itera-Lite one and the user's
    tokenizer fit each other and the study's windows."""
    checkpoint, tokenizer_path = config["model"].get("checkpoint"), config["tokenizer"].get("path")
    if not checkpoint:
        return
    found, file_format = checkpoint_config(checkpoint, config["model"].get("top_k"))
    imported = file_format == "Itera-Lite"
    mismatch = {} if imported else differences(found, cfg)
    if mismatch:
        raise ConfigError(f"model.checkpoint {checkpoint} does not match the config's model (found, config): "
                          f"{mismatch}")
    if imported and not tokenizer_path:
        raise ConfigError(f"model.checkpoint {checkpoint} is an Itera-Lite checkpoint: tokenizer.path must name the "
                          "tokenizer it was trained with")
    if imported:
        rows = tokenizer_rows(config["tokenizer"])
        if rows > cfg.vocab_size:
            raise ConfigError(f"tokenizer.path {tokenizer_path}: ids up to {rows - 1}, beyond the {cfg.vocab_size} "
                              f"rows of model.checkpoint {checkpoint}'s table")
        longest = max(config["benchmark"]["contexts"])
        if cfg.max_seq < longest:
            raise ConfigError(f"model.checkpoint {checkpoint}: its window of {cfg.max_seq} positions (the "
                              f"smaller of model.max_seq and the file's {found.max_seq}) is shorter than the "
                              f"study's windows need (benchmark.contexts up to {longest})")


SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "schema.yaml")


def check(config: dict, schema: str = SCHEMA) -> None:
    """The whole config check run at parse time: JSON Schema (filling defaults), then `validate`. Either raises
    ConfigError naming the dotted key."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as validate_schema

    try:
        validate_schema(config, schema)
    except WorkflowError as err:
        raise ConfigError(schema_error(config, schema) or str(err)) from None
    validate(config)


def schema_error(config: dict, schema: str = SCHEMA) -> str | None:
    """The schema violation JSON Schema reports first (its best match), as '<dotted key>: <what is wrong>'; None
    when the config is valid."""
    import jsonschema
    import yaml

    with open(schema, encoding="utf-8") as f:
        root = yaml.safe_load(f)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(root).iter_errors(config))
    if error is None:
        return None
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path).lstrip(".")

    def child(name):
        return f"{key}.{name}" if key else name

    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = sorted(error.schema.get("properties", {}))
        return f"{child(unknown[0])}: not a key of {key or 'the config'} (its keys: {', '.join(known)})"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        return f"{child(missing[0])}: missing (a required key)"
    alternatives = error.validator_value if error.validator == "anyOf" else []
    if alternatives and all("required" in option for option in alternatives):  # a training budget
        names = [child(name) for option in alternatives for name in option["required"]]
        return f"{key}: needs a budget: set {', '.join(names[:-1])} or {names[-1]}"
    if error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):  # a value of several forms
        forms = "; ".join(dict.fromkeys(e.message for e in error.parent.context))
        return f"{key}: {error.instance!r} matches none of its forms ({forms})"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return f"{key}: {error.message}" + (f" ({description})" if description else "")


def check_groups(groups: dict[str, str], components: dict[str, int], rules: set[str]) -> None:
    """A profile's `groups` (rule -> group) must name rules of the workflow and `group-components` (group -> count)
    groups that exist: Snakemake would otherwise leave a misspelt rule ungrouped, one submission per job, silently."""
    unknown = sorted(set(groups) - rules)
    if unknown:
        raise ConfigError(f"groups (profile or --groups) names {unknown}, not rules of this workflow; "
                          f"its rules: {sorted(rules)}")
    missing = sorted(set(components) - set(groups.values()))
    if missing:
        raise ConfigError(f"group-components (profile or --group-components) names {missing}, which no rule is "
                          f"grouped into; groups: {sorted(set(groups.values()))}")
