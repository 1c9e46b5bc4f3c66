from iteralite import artifacts, rulegraph, workflow

workflow.start(snakemake)  # noqa: F821
# The whole config goes to the nested `snakemake --rulegraph`; the rule's params hold only what changes the graph.
dot = rulegraph.rule_graph_dot(snakemake.input.snakefile, snakemake.config)  # noqa: F821
artifacts.write_text(snakemake.output.dot, dot)  # noqa: F821
