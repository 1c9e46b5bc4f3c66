import os

from iteralite import workflow
from iteralite.stages import benchmark
from iteralite.train import pick_device

workflow.start(snakemake)  # noqa: F821
params, inp = snakemake.params, snakemake.input  # noqa: F821
device = pick_device(params.settings["device"], workflow.holds_gpu(snakemake.resources))  # noqa: F821
exports = {model: os.path.dirname(manifest) for model, manifest in zip(params.exported, inp.exports)}
benchmark.benchmark(params.models, list(inp.models), exports, inp.tokens, inp.tokenizer, params.settings["benchmark"],
                    device, dict(snakemake.output))  # noqa: F821
