from iteralite import workflow
from iteralite.stages import pruning
from iteralite.train import TrainConfig, pick_device

workflow.start(snakemake)  # noqa: F821
params, inp, out = snakemake.params, snakemake.input, snakemake.output  # noqa: F821
variant, settings, name = params.variant, params.settings, snakemake.wildcards.variant  # noqa: F821
shape = settings["pruning"]
if variant["steps"] == 1:
    pruning.prune(name, variant["criterion"], variant["target"], shape["bounds"], shape["round_to"],
                  shape["pressure"], inp.checkpoint, inp.scores, out.checkpoint, out.stats)
else:
    calibration = None
    if "calibration_batches" in shape:
        calibration = {"batches": shape["calibration_batches"], "batch_size": settings["train"]["batch_size"],
                       "aux_loss_weight": settings["train"]["aux_loss_weight"]}
    device = pick_device(settings["device"], workflow.holds_gpu(snakemake.resources))  # noqa: F821
    recovery = TrainConfig.from_dict({**settings["finetune"], "max_steps": shape["recovery_steps"],
                                      "eval_every": shape["recovery_steps"], "seed": variant["seed"]})
    pruning.prune_in_steps(name, variant["criterion"], variant["target"], variant["steps"], shape["bounds"],
                           shape["round_to"], shape["pressure"], inp.checkpoint, inp.scores, inp.tokens, calibration,
                           shape.get("expert_criterion"), variant["seed"], recovery, device, out.checkpoint, out.stats)
