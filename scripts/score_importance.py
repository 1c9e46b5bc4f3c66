from iteralite import workflow
from iteralite.stages import pruning

workflow.start(snakemake)  # noqa: F821
settings, inp, out = snakemake.params.settings, snakemake.input, snakemake.output  # noqa: F821
calibration = None
if "calibration_batches" in settings.get("pruning", {}):  # the criterion reads data (study.importance_keys)
    calibration = {"batches": settings["pruning"]["calibration_batches"],
                   "batch_size": settings["train"]["batch_size"],
                   "aux_loss_weight": settings["train"]["aux_loss_weight"]}
pruning.score_importance(inp.checkpoint, inp.tokens, snakemake.wildcards.criterion,  # noqa: F821
                         settings.get("pruning", {}).get("expert_criterion", "same"), settings.get("seed", 0),
                         calibration, out.scores, out.csv)
