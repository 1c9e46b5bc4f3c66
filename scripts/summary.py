from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
stages.summarize(list(snakemake.input.metrics), snakemake.input.speed, snakemake.output.summary)  # noqa: F821
