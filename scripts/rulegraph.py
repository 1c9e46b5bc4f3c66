from iteralite import artifacts, rulegraph, workflow

workflow.start(snakemake)  # noqa: F821
# The whole config goes to the nested `snakemake --rulegraph`; the rule's params hold only what changes the graph.
(snakefile,) = snakemake.params.snakefile  # noqa: F821 (its one name, relative to the workflow's directory)
dot = rulegraph.rule_graph_dot(workflow.workflow_file(snakemake, snakefile), snakemake.config)  # noqa: F821
artifacts.write_text(snakemake.output.dot, dot)  # noqa: F821
