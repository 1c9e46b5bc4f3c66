from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
stages.prune(snakemake.params.config, snakemake.wildcards.variant, inp.checkpoint, inp.scores,  # noqa: F821
             out.checkpoint, out.stats)
