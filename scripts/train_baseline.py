from iteralite import workflow
from iteralite.stages import training
from iteralite.study import model_config
from iteralite.train import TrainConfig

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
if "user_checkpoint" in inp.keys():
    # the model section's config, or the one an Itera-Lite checkpoint's tensors give
    model_cfg = model_config({**settings, "model": {**settings["model"], "checkpoint": inp.user_checkpoint}})
    training.use_checkpoint(model_cfg, inp.user_checkpoint, inp.tokens, out.checkpoint, out.curve)
else:
    model_cfg = model_config(settings)  # the model section of either architecture, with the vocabulary size
    training.train_model(TrainConfig.from_dict({**settings["train"], "seed": settings["seed"]}), settings["device"],
                         inp.tokens, out.checkpoint, out.curve, model_cfg=model_cfg)
