"""The study as a grid: variant names, the models of the DAG, and checks of a config beyond its JSON Schema.

Everything here runs when Snakemake parses the workflow, before any job starts, so bad input fails at once.
"""

from __future__ import annotations

import os

from .model import IteraLiteConfig
from .pruning.criteria import CRITERIA
from .pruning.planner import PlanError, plan_target


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


def model_config(config: dict) -> IteraLiteConfig:
    values = {k: v for k, v in config["model"].items() if k != "checkpoint"}
    try:
        return IteraLiteConfig(vocab_size=config["tokenizer"]["vocab_size"], **values)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


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
        node[parts[-1]] = value
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
    """The config keys a criterion's scores depend on (never the targets): the seed (random scores, calibration
    windows), and the calibration settings when the criterion, or the expert criterion it implies, reads data."""
    if criterion == "random":
        return ["seed"]
    keys = ["pruning.expert_criterion"]
    if CRITERIA[criterion].needs_calibration or config["pruning"]["expert_criterion"] == "routing":
        keys += ["seed", "pruning.calibration_batches", "train.batch_size", "train.aux_loss_weight"]
    return keys


def target_label(target) -> str:
    """0.4 -> 't40', 'plan' -> 'plan'."""
    if isinstance(target, str):
        return target
    percent = round(target * 100, 2)
    return f"t{percent:g}".replace(".", "p")


def variants(config: dict) -> list[str]:
    """Pruned variant names, '<criterion>-<target label>'."""
    p = config["pruning"]
    return [f"{c}-{target_label(t)}" for c in p["criteria"] for t in p["targets"]]


def parse_variant(config: dict, variant: str) -> tuple[str, object]:
    for c in config["pruning"]["criteria"]:
        for t in config["pruning"]["targets"]:
            if variant == f"{c}-{target_label(t)}":
                return c, t
    raise ConfigError(f"unknown variant {variant!r}; the study has {variants(config)}")


def plan_for(config: dict, target) -> dict:
    p = config["pruning"]
    try:
        return plan_target(model_config(config), target, p["bounds"], p["round_to"])
    except PlanError as err:
        raise ConfigError(str(err)) from None


def finetuned_variants(config: dict) -> list[str]:
    """Fine-tuned models: every pruned variant, plus 'dense' (the equal-budget control) when enabled."""
    control = ["dense"] if config["finetune"]["control"] else []
    return variants(config) + control


def quantized_sources(config: dict) -> list[str]:
    """'stage/variant' of every model that gets an INT4 copy."""
    sources = []
    for item in config["quantize"]["models"]:
        stage, _, variant = item.partition("/")
        if stage == "baseline":
            sources.append("baseline/dense")
        elif stage in ("pruned", "finetuned"):
            names = variants(config) if stage == "pruned" else finetuned_variants(config)
            chosen = names if variant == "all" else [variant]
            for v in chosen:
                if v not in names:
                    raise ConfigError(f"quantize.models: {item!r} names no model of the study ({stage}: {names})")
                sources.append(f"{stage}/{v}")
        else:
            raise ConfigError(
                f"quantize.models: {item!r} must be baseline/dense, pruned/<variant|all> or finetuned/<variant|all>"
            )
    return sources


def all_models(config: dict) -> list[str]:
    """Every model of the DAG as 'stage/variant' (int4 copies as 'int4-<stage>/<variant>')."""
    models = ["baseline/dense"]
    models += [f"pruned/{v}" for v in variants(config)]
    models += [f"finetuned/{v}" for v in finetuned_variants(config)]
    models += [f"int4-{s}" for s in quantized_sources(config)]
    return models


def validate(config: dict) -> None:
    """Checks the JSON Schema cannot express; raises ConfigError naming the key."""
    cfg = model_config(config)
    if cfg.top_k > cfg.n_experts:
        raise ConfigError(f"model.top_k={cfg.top_k} exceeds model.n_experts={cfg.n_experts}")
    corpus = config["corpus"]
    if corpus["source"] == "files":
        if not corpus.get("paths"):
            raise ConfigError("corpus.paths must list at least one file when corpus.source is 'files'")
        for path in corpus["paths"]:
            if not os.path.isfile(path):
                raise ConfigError(f"corpus.paths: file not found: {path}")
    if corpus["source"] == "hub" and not corpus.get("hub_name"):
        raise ConfigError("corpus.hub_name must name a dataset when corpus.source is 'hub'")
    checkpoint = config["model"].get("checkpoint")
    if checkpoint and not os.path.isfile(checkpoint):
        raise ConfigError(f"model.checkpoint: file not found: {checkpoint}")
    group = config["quantize"]["group_size"]
    if cfg.d_model % group:
        raise ConfigError(f"quantize.group_size={group} must divide model.d_model={cfg.d_model}")
    for key in ("train", "finetune"):
        if config[key]["batch_size"] < 1:
            raise ConfigError(f"{key}.batch_size must be >= 1")
    for target in config["pruning"]["targets"]:
        plan_for(config, target)
    quantized_sources(config)


SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "schema.yaml")


def check(config: dict, schema: str = SCHEMA) -> None:
    """The whole config check run at parse time: JSON Schema (filling defaults), then `validate`."""
    from snakemake.utils import validate as validate_schema

    validate_schema(config, schema)
    validate(config)
