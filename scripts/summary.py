from iteralite import workflow
from iteralite.stages import evaluate

workflow.start(snakemake)  # noqa: F821
evaluate.summarize(list(snakemake.input.metrics), snakemake.input.speed, snakemake.output.summary)  # noqa: F821
