from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
stages.quantize(snakemake.input.checkpoint, snakemake.params.quantize, out.model, out.stats)  # noqa: F821
