from iteralite import stages, workflow

workflow.start(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
stages.benchmark(snakemake.params.models, list(inp.models), inp.tokens, inp.tokenizer,  # noqa: F821
                 snakemake.params.benchmark, dict(out))  # noqa: F821
