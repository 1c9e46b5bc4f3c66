from iteralite import workflow
from iteralite.stages import pruning

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
# The slice holds exactly what the criterion reads (study.importance_keys): nothing for random scores, the
# calibration keys for every other criterion.
chosen = settings.get("pruning", {})
calibration = None
if "calibration_batches" in chosen:
    calibration = {"batches": chosen["calibration_batches"], "batch_size": settings["train"]["batch_size"],
                   "aux_loss_weight": settings["train"]["aux_loss_weight"]}
wildcards = snakemake.wildcards  # noqa: F821
pruning.score_importance(inp.checkpoint, inp.tokens, wildcards.criterion, chosen.get("expert_criterion"),
                         int(wildcards.seed), calibration, out.scores, out.csv)
