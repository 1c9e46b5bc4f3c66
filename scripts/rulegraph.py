from iteralite import rulegraph, workflow

workflow.start(snakemake)  # noqa: F821
# The whole config goes to the nested `snakemake --rulegraph`; the rule's params hold only what changes the graph.
dot = rulegraph.rule_graph_dot(snakemake.input.snakefile, snakemake.config)  # noqa: F821
with open(snakemake.output.dot, "w", encoding="utf-8") as f:  # noqa: F821
    f.write(dot)
