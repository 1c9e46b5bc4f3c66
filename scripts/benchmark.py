from iteralite import workflow
from iteralite.stages import benchmark

workflow.start(snakemake)  # noqa: F821
params, inp = snakemake.params, snakemake.input  # noqa: F821
benchmark.benchmark(params.models, list(inp.models), inp.tokens, inp.tokenizer, params.settings["benchmark"],
                    dict(snakemake.output))  # noqa: F821
