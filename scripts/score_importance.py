from iteralite import workflow
from iteralite.stages import pruning
from iteralite.train import pick_device

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
# The slice holds exactly what the criterion reads (study.importance_keys): nothing for random scores, the
# calibration keys and the device they run on for every other criterion.
chosen = settings.get("pruning", {})
calibration = None
if "calibration_batches" in chosen:
    calibration = {"batches": chosen["calibration_batches"], "batch_size": settings["train"]["batch_size"],
                   "aux_loss_weight": settings["train"]["aux_loss_weight"]}
device = pick_device(settings.get("device", "cpu"), workflow.holds_gpu(snakemake.resources))  # noqa: F821
wildcards = snakemake.wildcards  # noqa: F821
pruning.score_importance(inp.checkpoint, inp.tokens, wildcards.criterion, chosen.get("expert_criterion"),
                         int(wildcards.seed), calibration, device, out.scores, out.csv)
