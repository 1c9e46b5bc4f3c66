from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
stages.prepare_corpus(snakemake.params.corpus, snakemake.params.seed, dict(snakemake.output))  # noqa: F821
