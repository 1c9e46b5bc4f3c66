from iteralite import report, workflow

workflow.start(snakemake)  # noqa: F821
(targets,) = snakemake.params.targets  # noqa: F821 (its one name, relative to the workflow's directory)
inputs = {**dict(snakemake.input), "targets": workflow.workflow_file(snakemake, targets)}  # noqa: F821
report.build(inputs, snakemake.params.study_config, snakemake.output.html)  # noqa: F821
