from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
stages.train_tokenizer(snakemake.input.train, snakemake.params.tokenizer, snakemake.output.tokenizer)  # noqa: F821
