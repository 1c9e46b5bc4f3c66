# IteraLite compression study: corpus -> tokenizer -> baseline -> analysis -> importance -> pruning -> fine-tuning
# -> INT4 -> ONNX export -> benchmark -> report. Each stage's rules live in rules/<stage>.smk; helpers in
# rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/baseline.smk"
include: "rules/pruning.smk"
include: "rules/finetune.smk"
include: "rules/quantize.smk"
include: "rules/export.smk"
include: "rules/report.smk"


# A profile's groups (profiles/slurm: fewer submissions) must name this workflow's rules and groups. Snakemake sets
# them after parsing, so they are checked when the run starts, before any job.
onstart:
    try:
        study.check_groups(dict(workflow.group_settings.overwrite_groups),
                           dict(workflow.group_settings.group_components), {r.name for r in workflow.rules})
    except study.ConfigError as err:
        raise WorkflowError(f"invalid profile: {err}") from None


rule all:
    input:
        "results/report.html",
        "results/metrics/summary.csv",
