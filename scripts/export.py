from iteralite import workflow
from iteralite.export import ExportSettings
from iteralite.stages import export

workflow.start(snakemake)  # noqa: F821
params, inp = snakemake.params, snakemake.input  # noqa: F821
settings = ExportSettings(verify_windows=params.settings["export"]["verify_windows"],
                          verify_tokens=params.settings["evaluate"]["test_tokens"])
export.export(params.model, inp.model, inp.tokens, inp.tokenizer, settings, dict(snakemake.output))  # noqa: F821
