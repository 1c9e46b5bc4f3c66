from iteralite import report, workflow

workflow.start(snakemake)  # noqa: F821
report.build(dict(snakemake.input), snakemake.params.study_config, snakemake.output.html)  # noqa: F821
