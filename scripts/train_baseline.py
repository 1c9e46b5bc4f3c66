from iteralite import workflow
from iteralite.architectures.configs import config_from_dict
from iteralite.stages import training, user_baseline
from iteralite.train import TrainConfig, pick_device

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
# the study's model, as the workflow's parse worked it out (either architecture; an imported checkpoint's sizes)
model_cfg = config_from_dict(settings["model"])
if "user_checkpoint" in inp.keys():
    user_baseline.use_checkpoint(model_cfg, inp.user_checkpoint, inp.tokens, out.checkpoint, out.curve)
else:
    device = pick_device(settings["device"], workflow.holds_gpu(snakemake.resources))  # noqa: F821
    training.train_model(TrainConfig.from_dict({**settings["train"], "seed": settings["seed"]}), device,
                         inp.tokens, out.checkpoint, out.curve, model_cfg=model_cfg)
