# IteraLite compression study: corpus -> tokenizer -> baseline -> analysis -> importance -> pruning -> fine-tuning
# -> INT4 -> benchmark -> report. Each stage's rules live in rules/<stage>.smk; helpers in rules/common.smk.
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
include: "rules/report.smk"


rule all:
    input:
        "results/report.html",
        "results/metrics/summary.csv",
