from iteralite import workflow
from iteralite.stages import evaluate

workflow.start(snakemake)  # noqa: F821
w, inp = snakemake.wildcards, snakemake.input  # noqa: F821
evaluate.evaluate(f"{w.stage}/{w.variant}", inp.model, inp.tokens,
                  snakemake.params.settings["evaluate"]["test_tokens"], snakemake.output.metrics)  # noqa: F821
