from iteralite import workflow
from iteralite.stages import evaluate
from iteralite.train import pick_device

workflow.start(snakemake)  # noqa: F821
w, inp, settings = snakemake.wildcards, snakemake.input, snakemake.params.settings  # noqa: F821
device = pick_device(settings["device"], workflow.holds_gpu(snakemake.resources))  # noqa: F821
evaluate.evaluate(f"{w.stage}/{w.variant}", inp.model, inp.tokens, settings["evaluate"]["test_tokens"], device,
                  snakemake.output.metrics)  # noqa: F821
