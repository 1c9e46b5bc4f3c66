from iteralite import workflow
from iteralite.stages import training
from iteralite.train import TrainConfig, pick_device

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
recipe = {**settings["finetune"], "seed": settings["seed"]}
if settings["method"] == "plain":
    recipe["distill_weight"] = 0.0
device = pick_device(settings["device"], workflow.holds_gpu(snakemake.resources))  # noqa: F821
training.train_model(TrainConfig.from_dict(recipe), device, inp.tokens, out.checkpoint, out.curve,
                     init_checkpoint=inp.checkpoint, teacher_checkpoint=inp.get("teacher"))
