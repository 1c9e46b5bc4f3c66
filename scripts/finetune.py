from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
config, inp, out = snakemake.params.config, snakemake.input, snakemake.output  # noqa: F821
stages.train_model(config, config["finetune"], inp.tokens, out.checkpoint, out.curve,
                   init_checkpoint=inp.checkpoint, teacher_checkpoint=inp.teacher)
