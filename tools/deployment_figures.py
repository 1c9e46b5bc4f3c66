"""The deployment figures of a finished study, as docs/deploy.md and docs/results.md quote them: every ratio from
one summary.csv (the benchmark measured torch and ONNX Runtime side by side in one process), export times from
Snakemake's benchmark files.

    python tools/deployment_figures.py            # after `snakemake all`, in the study's directory
"""

from __future__ import annotations

import glob
import sys

import pandas as pd


def main(summary_csv: str = "results/metrics/summary.csv") -> None:
    summary = pd.read_csv(summary_csv)
    by = summary.drop_duplicates(["model", "runtime"]).set_index(["model", "runtime"])
    exported = list(summary[summary["runtime"] == "onnxruntime"]["model"])
    base = by.loc[("baseline/dense", "torch")]
    print(f"{'model':<40}{'latency ORT/torch':>18}{'tokens/s ORT/torch':>19}{'ORT tokens/s vs baseline':>25}"
          f"{'ORT latency vs baseline':>24}{'serve RSS ORT/torch':>20}")
    for model in exported:
        t, o = by.loc[(model, "torch")], by.loc[(model, "onnxruntime")]
        print(f"{model:<40}{o['step_latency_ms'] / t['step_latency_ms']:>17.3f}x"
              f"{o['tokens_per_s'] / t['tokens_per_s']:>18.2f}x"
              f"{o['tokens_per_s'] / base['tokens_per_s']:>24.2f}x"
              f"{o['step_latency_ms'] / base['step_latency_ms']:>23.3f}x"
              f"{o['serve_rss_mb'] / t['serve_rss_mb']:>19.3f}x")
    print(f"\n{'INT4 in ONNX Runtime against its float32 source in ONNX Runtime':<64}"
          f"{'weights':>9}{'latency':>9}{'tokens/s':>10}")
    for model in exported:
        source = model.removeprefix("int4-")
        if source != model and (source, "onnxruntime") in by.index:
            q, f = by.loc[(model, "onnxruntime")], by.loc[(source, "onnxruntime")]
            print(f"{model:<64}{q['weight_mem_mb'] / f['weight_mem_mb']:>8.3f}x"
                  f"{q['step_latency_ms'] / f['step_latency_ms']:>8.3f}x{q['tokens_per_s'] / f['tokens_per_s']:>9.2f}x")
    print("\nabsolute: model, runtime, ms per token, tokens/s, weights MiB, serving peak RSS MiB, test ppl")
    for (model, runtime), row in by[by.index.get_level_values(0).isin(exported)].iterrows():
        print(f"  {model:<40}{runtime:<13}{row['step_latency_ms']:>7.3f}{row['tokens_per_s']:>10,.0f}"
              f"{row['weight_mem_mb']:>8.2f}{row['serve_rss_mb']:>8.0f}{row['test_ppl']:>9.3f}")
    seconds = {path.split("benchmarks/export/")[1].removesuffix(".tsv"): pd.read_csv(path, sep="\t")["s"].iloc[-1]
               for path in sorted(glob.glob("benchmarks/export/*/*.tsv"))}
    if seconds:
        print("\nexport jobs (s, with start-up):", ", ".join(f"{m} {s:.1f}" for m, s in seconds.items()))


if __name__ == "__main__":
    main(*sys.argv[1:2])
