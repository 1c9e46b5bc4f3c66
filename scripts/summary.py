from iteralite import workflow
from iteralite.stages import summary

workflow.start(snakemake)  # noqa: F821
summary.summarize(list(snakemake.input.metrics), snakemake.input.speed, snakemake.output.summary)  # noqa: F821
