from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
config, inp, out = snakemake.params.config, snakemake.input, snakemake.output  # noqa: F821
if config["model"].get("checkpoint"):
    stages.use_checkpoint(config, config["model"]["checkpoint"], inp.tokens, out.checkpoint, out.curve)
else:
    stages.train_model(config, config["train"], inp.tokens, out.checkpoint, out.curve)
