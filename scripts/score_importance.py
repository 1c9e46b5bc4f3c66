from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
stages.score_importance(snakemake.params.config, inp.checkpoint, inp.tokens, snakemake.wildcards.criterion,  # noqa: F821
                        out.scores, out.csv)
