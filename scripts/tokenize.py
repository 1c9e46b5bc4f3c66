from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
stages.tokenize(list(snakemake.input.splits), snakemake.input.tokenizer, out.tokens, out.stats)  # noqa: F821
