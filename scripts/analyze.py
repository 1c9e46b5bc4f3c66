from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
stages.analyze(snakemake.input.checkpoint, out.json, out.csv, out.groups)  # noqa: F821
