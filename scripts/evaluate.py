from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
w, inp = snakemake.wildcards, snakemake.input  # noqa: F821
stages.evaluate(f"{w.stage}/{w.variant}", inp.model, inp.tokens, snakemake.params.test_tokens,  # noqa: F821
                snakemake.output.metrics)  # noqa: F821
