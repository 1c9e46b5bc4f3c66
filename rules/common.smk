# Helpers shared by every stage: config validation, the study grid, config slices, code digests, paths and
# wildcard constraints.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from iteralite import provenance, study

try:
    study.check(config, workflow.source_path("../config/schema.yaml"))
except study.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

VARIANTS = list(study.pruned_variants(config))
FINETUNED = list(study.finetuned_variants(config))
QUANTIZED = study.quantized_sources(config)
MODELS = study.all_models(config)
EXPORTED = study.exported_models(config)
BENCHMARKED = study.benchmarked_models(config)
CRITERIA = config["pruning"]["criteria"]
SEEDS = config["seeds"]
SCORES = [f"{criterion}-s{seed}" for criterion in CRITERIA for seed in SEEDS]
# Memory for the jobs whose activations grow with the window (training, calibration, export, benchmark): 2000 MB at
# 128 positions and 1000 MB for every 128 more. Peak RSS measured at 128 and 512 positions, 1.0-1.5 and 1.9-3.3 GiB
# (docs/import.md, "An import at 512 positions"); a profile's set-resources overrides it.
WINDOW_MEM_MB = 1000 + 1000 * study.model_config(config).max_seq // 128


wildcard_constraints:
    stage="baseline|pruned|finetuned|int4-baseline|int4-pruned|int4-finetuned",
    fstage="baseline|pruned|finetuned",
    variant="[A-Za-z0-9.]+(-[A-Za-z0-9.]+)*",
    criterion="|".join(CRITERIA),
    seed=r"\d+",


def config_slice(*keys, drop=()):
    """The config keys (dotted) that change a rule's output, and no others: its params (iteralite.study)."""
    return study.config_slice(config, keys, drop)


def code_of(script):
    """Digest of the package modules scripts/<script>.py runs: an edit to one reruns the rule and what follows."""
    return provenance.code_digest(Path(workflow.basedir) / "scripts" / f"{script}.py")


def workflow_files(*paths):
    """Files of the workflow, each by its name relative to the workflow's directory and its content
    (iteralite.provenance.files_digest): a rule's param, so that the study reruns nothing when the checkout is moved,
    copied or mounted elsewhere; a job finds them with iteralite.workflow.workflow_file."""
    return provenance.files_digest(workflow.basedir, paths)


def checkpoint_path(model):
    """'stage/variant' -> its checkpoint file."""
    return f"results/models/{model}/model.pt"


def export_dir(model):
    """'stage/variant' -> its ONNX export's directory."""
    return f"results/export/{model}"


def metrics_path(model):
    return f"results/metrics/models/{model}.json"


def finetune_inputs(wildcards):
    """The model to fine-tune (the control: the dense baseline; else the pruned variant), the tokens, and the
    teacher only when distillation reads it."""
    recipe = study.variant(config, "finetuned", wildcards.variant)
    inputs = {"checkpoint": checkpoint_path(recipe["source"]), "tokens": "results/tokens/tokens.pt"}
    if recipe["method"] == "distill":
        inputs["teacher"] = checkpoint_path("baseline/dense")
    return inputs


def finetune_settings(wildcards):
    """The finetune section, less the grid keys (methods, control) and the distillation keys a plain fine-tune
    never reads; the variant's method and seed come with its name."""
    recipe = study.variant(config, "finetuned", wildcards.variant)
    drop = ["finetune.control", "finetune.methods"]
    if recipe["method"] == "plain":
        drop += ["finetune.distill_weight", "finetune.distill_temperature"]
    return {**config_slice("finetune", "device", drop=drop), "method": recipe["method"], "seed": recipe["seed"]}


def job_benchmarks():
    """Snakemake's benchmark file of every job before the report (the report's per-job cost)."""
    files = [f"benchmarks/{rule}.tsv" for rule in
             ("prepare_corpus", "train_tokenizer", "tokenize", "train_baseline", "analyze", "benchmark", "rulegraph",
              "summary")]
    files += [f"benchmarks/evaluate/{m}.tsv" for m in MODELS]
    files += [f"benchmarks/score_importance/{s}.tsv" for s in SCORES]
    files += [f"benchmarks/prune/{v}.tsv" for v in VARIANTS]
    files += [f"benchmarks/finetune/{v}.tsv" for v in FINETUNED]
    files += [f"benchmarks/quantize/{s}.tsv" for s in QUANTIZED]
    files += [f"benchmarks/export/{m}.tsv" for m in EXPORTED]
    return files


def variant_of(wildcards):
    """A pruned variant's own criterion, target, schedule (steps) and seed."""
    return study.variant(config, "pruned", wildcards.variant)


def prune_inputs(wildcards):
    """The baseline and the variant's scores; a schedule in steps also reads the tokens (rescoring, recovery)."""
    variant = variant_of(wildcards)
    inputs = {"checkpoint": checkpoint_path("baseline/dense"),
              "scores": "results/importance/{criterion}-s{seed}.pt".format(**variant)}
    if variant["steps"] > 1:
        inputs["tokens"] = "results/tokens/tokens.pt"
    return inputs


def prune_settings(wildcards):
    """The planner's bounds, rounding and pressure; a schedule in steps adds what its rescoring and recovery read."""
    variant = variant_of(wildcards)
    if variant["steps"] == 1:
        return config_slice("pruning.bounds", "pruning.round_to", "pruning.pressure")
    keys = ["pruning.bounds", "pruning.round_to", "pruning.pressure", "pruning.recovery_steps", "finetune", "device"]
    keys += study.importance_keys(config, variant["criterion"])
    return config_slice(*keys, drop=["finetune.control", "finetune.methods", "finetune.max_steps"])


USER_CHECKPOINT = config["model"]["checkpoint"]
USER_TOKENIZER = config["tokenizer"].get("path")


def tokenizer_inputs(wildcards):
    """The user's tokenizer file (tokenizer.path), or the training split a BPE is trained on."""
    return {"user": USER_TOKENIZER} if USER_TOKENIZER else {"train": "results/corpus/train.txt"}


def baseline_inputs(wildcards):
    """The tokens, and the user's baseline checkpoint when model.checkpoint names one."""
    inputs = {"tokens": "results/tokens/tokens.pt"}
    if USER_CHECKPOINT:
        inputs["user_checkpoint"] = USER_CHECKPOINT
    return inputs


def baseline_settings():
    """The study's model config as the parse works it out (iteralite.study.model_config: the model section with the
    tokenizer's vocabulary, or an imported checkpoint's sizes), which a user checkpoint is checked against; training
    depends on the train section too."""
    model = {"model": study.model_config(config).to_dict()}
    if USER_CHECKPOINT:
        return model
    return {**config_slice("train", "seed", "device"), **model}
