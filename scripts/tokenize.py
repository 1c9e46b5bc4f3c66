from iteralite import workflow
from iteralite.stages import corpus

workflow.start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
corpus.tokenize(list(snakemake.input.splits), snakemake.input.tokenizer, snakemake.params.window,  # noqa: F821
                out.tokens, out.stats)
