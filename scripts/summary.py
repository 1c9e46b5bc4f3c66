from iteralite import workflow
from iteralite.stages import summary

workflow.start(snakemake)  # noqa: F821
inp = snakemake.input  # noqa: F821
summary.summarize(list(inp.metrics), list(inp.exports), inp.speed, inp.load, snakemake.output.summary)  # noqa: F821
