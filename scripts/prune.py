from iteralite import workflow
from iteralite.stages import pruning

workflow.start(snakemake)  # noqa: F821
params, inp, out = snakemake.params, snakemake.input, snakemake.output  # noqa: F821
bounds_and_rounding = params.settings["pruning"]
pruning.prune(snakemake.wildcards.variant, params.variant["criterion"], params.variant["target"],  # noqa: F821
              bounds_and_rounding["bounds"], bounds_and_rounding["round_to"], inp.checkpoint, inp.scores,
              out.checkpoint, out.stats)
