from iteralite import workflow
from iteralite.stages import quantize

workflow.start(snakemake)  # noqa: F821
settings, out = snakemake.params.settings["quantize"], snakemake.output  # noqa: F821
quantize.quantize(snakemake.input.checkpoint, settings["group_size"], settings["keep_high_precision"],  # noqa: F821
                  out.model, out.stats)
