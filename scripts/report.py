from iteralite import report, workflow

workflow.start(snakemake)  # noqa: F821
report.build(dict(snakemake.input), snakemake.params.config, snakemake.params.benchmarks_dir,  # noqa: F821
             snakemake.output.html)  # noqa: F821
