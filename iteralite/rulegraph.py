"""The study's rule graph: Snakemake's own (`--rulegraph dot`), read into nodes and edges and drawn in layers with the
plotting stack, so the report needs no graphviz."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"', re.MULTILINE)
EDGE = re.compile(r"^\s*(\d+) -> (\d+)", re.MULTILINE)


def rule_graph_dot(snakefile: str, config: dict) -> str:
    """Snakemake's rule graph of target `all` for this study's config, as DOT text."""
    with tempfile.TemporaryDirectory() as tmp:
        configfile = Path(tmp) / "study.yaml"
        configfile.write_text(yaml.safe_dump(config))
        run = subprocess.run([sys.executable, "-m", "snakemake", "all", "--rulegraph", "dot", "--nolock", "--quiet",
                              "--snakefile", snakefile, "--configfile", str(configfile)],
                             capture_output=True, text=True, check=False)
    if run.returncode != 0 or "digraph" not in run.stdout:
        raise RuntimeError(f"snakemake --rulegraph failed: {run.stderr[-2000:]}")
    return run.stdout[run.stdout.index("digraph"):]


def parse_dot(dot: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(node id -> rule name, edges as (from id, to id)) of Snakemake's DOT output."""
    return dict(NODE.findall(dot)), EDGE.findall(dot)


def layers(nodes: dict[str, str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Each node's layer: the length of the longest path from a rule with no inputs, so every edge points right."""
    parents: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        parents[dst].append(src)
    depth: dict[str, int] = {}

    def visit(node: str) -> int:
        if node not in depth:
            depth[node] = 1 + max((visit(p) for p in parents[node]), default=-1)
        return depth[node]

    for node in nodes:
        visit(node)
    return depth
