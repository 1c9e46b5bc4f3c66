# Helpers shared by every stage: config validation, the study grid, paths and wildcard constraints.
import os

from snakemake.exceptions import WorkflowError

from iteralite import study

# Large scan tensors: keep freed memory in the process instead of returning it to the OS on every step
# (measured 2x faster training steps on the project's CPU; README, "Measured figures").
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296")


try:
    study.check(config, workflow.source_path("../config/schema.yaml"))
except study.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

VARIANTS = study.variants(config)
FINETUNED = study.finetuned_variants(config)
QUANTIZED = study.quantized_sources(config)
MODELS = study.all_models(config)
CRITERIA = config["pruning"]["criteria"]


wildcard_constraints:
    stage="baseline|pruned|finetuned|int4-baseline|int4-pruned|int4-finetuned",
    fstage="baseline|pruned|finetuned",
    variant="[A-Za-z0-9.]+(-[A-Za-z0-9.]+)?",
    criterion="|".join(CRITERIA),


def checkpoint_path(model):
    """'stage/variant' -> its checkpoint file."""
    return f"results/models/{model}/model.pt"


def metrics_path(model):
    return f"results/metrics/models/{model}.json"


def finetune_source(wildcards):
    """The control fine-tunes the dense baseline; every other variant fine-tunes its pruned model."""
    if wildcards.variant == "dense":
        return checkpoint_path("baseline/dense")
    return checkpoint_path(f"pruned/{wildcards.variant}")
