from iteralite import workflow
from iteralite.stages import analyze

workflow.start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
analyze.analyze(snakemake.input.checkpoint, out.json, out.csv, out.groups)  # noqa: F821
