"""What each rule's jobs cost in a finished study, from Snakemake's benchmark files (benchmarks/**/*.tsv): jobs, the
shortest and longest run time, and the largest peak resident memory (`max_rss`, MiB), as docs/results.md quotes them;
beside it, the memory the Slurm profile requests for the rule (`mem_mb`, MB), to see which jobs outgrow it.

    python tools/job_costs.py [PROFILE]     # in the study's directory; PROFILE: profiles/slurm/config.yaml of the
                                            # checkout (the default: the one beside this tool)
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import pandas as pd
import yaml

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "slurm" / "config.yaml"


def costs(pattern: str = "benchmarks/**/*.tsv") -> pd.DataFrame:
    rows = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        last = pd.read_csv(path, sep="\t").iloc[-1]
        rows.append({"rule": path.split("/")[1].removesuffix(".tsv"), "s": last["s"], "max_rss": last["max_rss"]})
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule").agg(jobs=("s", "size"), shortest_s=("s", "min"), longest_s=("s", "max"),
                                     peak_rss_mib=("max_rss", "max"))
    return table.sort_values("longest_s", ascending=False)


def requested_mb(profile: Path, rules) -> list[int]:
    """Each rule's mem_mb in the profile: its set-resources entry, else the default-resources one."""
    settings = yaml.safe_load(profile.read_text(encoding="utf-8"))
    default = settings.get("default-resources", {}).get("mem_mb")
    specific = settings.get("set-resources", {})
    return [specific.get(rule, {}).get("mem_mb", default) for rule in rules]


if __name__ == "__main__":
    table = costs()
    table["slurm_mem_mb"] = requested_mb(Path(sys.argv[1]) if len(sys.argv) > 1 else PROFILE, table.index)
    print(table.to_string(float_format=lambda v: f"{v:.1f}"))
