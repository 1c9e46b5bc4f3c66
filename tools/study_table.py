"""The table of a finished study as README.md and docs/results.md show it, in Markdown: one row per family (a model
name without its seed) and runtime, from results/metrics/summary.csv: test perplexity of each seed in seed order
and the change of their mean against the baseline, file size, and throughput against the baseline in torch, from
the study's benchmark (every model side by side in one process).

    python tools/study_table.py                       # every family, in the study's directory
    python tools/study_table.py baseline/dense finetuned/dense ...   # these families only, in this order
"""

from __future__ import annotations

import sys

import pandas as pd

HEADER = ["model (family)", "runtime", "params", "file (MB)", "smaller", "test ppl (seeds)", "vs baseline",
          "tokens/s vs baseline"]


def rows(summary: pd.DataFrame, families: list[str]) -> list[list[str]]:
    base = summary[(summary["model"] == "baseline/dense") & (summary["runtime"] == "torch")].iloc[0]
    out = []
    for (family, runtime), group in summary.groupby(["family", "runtime"], sort=False):
        if families and family not in families:
            continue
        group = group.sort_values("seed")
        is_base = family == "baseline/dense" and runtime == "torch"
        file_bytes = group["file_bytes"].mean()
        out.append([
            family, runtime, f"{group['params'].iloc[0]:,}",
            f"{file_bytes / 1e6:.{2 if file_bytes >= 1e6 else 3}f}" + (" (both graphs)" * (runtime == "onnxruntime")),
            f"{base['file_bytes'] / file_bytes:.1f}x" if runtime == "torch" else "",
            ", ".join(f"{ppl:.2f}" for ppl in group["test_ppl"]),
            "" if is_base else f"{group['test_ppl'].mean() / base['test_ppl'] - 1:+.1%}",
            f"{group['tokens_per_s'].mean() / base['tokens_per_s']:.2f}x",
        ])
    if families:
        out.sort(key=lambda row: (families.index(row[0]), row[1] != "torch"))
    return out


def main(args: list[str]) -> None:
    summary = pd.read_csv("results/metrics/summary.csv")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows(summary, args):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
