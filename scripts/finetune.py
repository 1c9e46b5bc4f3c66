from iteralite import workflow
from iteralite.stages import training
from iteralite.train import TrainConfig

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
training.train_model(TrainConfig.from_dict({**settings["finetune"], "seed": settings["seed"]}), settings["device"],
                     inp.tokens, out.checkpoint, out.curve, init_checkpoint=inp.checkpoint,
                     teacher_checkpoint=inp.get("teacher"))
