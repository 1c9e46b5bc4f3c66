from iteralite import report, workflow

workflow.start(snakemake)  # noqa: F821
(plan,) = snakemake.params.plan  # noqa: F821 (its one name, relative to the workflow's directory)
inputs = {**dict(snakemake.input), "plan": workflow.workflow_file(snakemake, plan)}  # noqa: F821
report.build(inputs, snakemake.params.study_config, snakemake.output.html)  # noqa: F821
