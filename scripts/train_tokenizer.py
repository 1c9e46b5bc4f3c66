from iteralite import workflow
from iteralite.stages import corpus

workflow.start(snakemake)  # noqa: F821
tokenizer = snakemake.params.settings["tokenizer"]  # noqa: F821
corpus.train_tokenizer(snakemake.input.train, tokenizer["vocab_size"], tokenizer["min_frequency"],  # noqa: F821
                       snakemake.output.tokenizer)  # noqa: F821
