"""What each rule's jobs cost in a finished study, from Snakemake's benchmark files (benchmarks/**/*.tsv): jobs, the
shortest and longest run time, and the largest peak resident memory (`max_rss`, MiB), as docs/results.md quotes them.

    python tools/job_costs.py            # in the study's directory
"""

from __future__ import annotations

import glob

import pandas as pd


def costs(pattern: str = "benchmarks/**/*.tsv") -> pd.DataFrame:
    rows = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        last = pd.read_csv(path, sep="\t").iloc[-1]
        rows.append({"rule": path.split("/")[1].removesuffix(".tsv"), "s": last["s"], "max_rss": last["max_rss"]})
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule").agg(jobs=("s", "size"), shortest_s=("s", "min"), longest_s=("s", "max"),
                                     peak_rss_mib=("max_rss", "max"))
    return table.sort_values("longest_s", ascending=False)


if __name__ == "__main__":
    print(costs().to_string(float_format=lambda v: f"{v:.1f}"))
