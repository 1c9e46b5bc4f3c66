from iteralite import workflow
from iteralite.stages import corpus

workflow.start(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
settings = snakemake.params.settings  # noqa: F821
corpus.prepare_corpus(settings["corpus"], settings["seed"], dict(snakemake.output))  # noqa: F821
