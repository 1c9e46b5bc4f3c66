"""Rule summary: the study's main table (results/metrics/summary.csv) from every model's metrics and the speed
table. Torch-free: it reads JSON and CSV only."""

from __future__ import annotations

import pandas as pd

from .. import naming
from ..artifacts import read_json, write_csv

SUMMARY_COLUMNS = ["model", "stage", "criterion", "target", "method", "seed", "params", "file_bytes", "test_ppl",
                   "test_tokens", "tokens_per_s", "step_latency_ms"]


def summarize(metric_paths: list[str], speed_csv: str, out_csv: str) -> pd.DataFrame:
    """One row per model and seed. Speed was measured for one seed of each family (its architecture is the same for
    every seed), so each row takes its family's speed."""
    rows = pd.DataFrame([read_json(p) for p in metric_paths])
    speed = pd.read_csv(speed_csv)[["model", "tokens_per_s", "step_latency_ms", "peak_mem_mb", "weight_mem_mb",
                                    "int4_path"]]
    speed["family"] = speed.pop("model").map(lambda m: naming.describe(m)["family"])
    rows = rows.merge(speed, on="family", how="left")
    rows["seed"] = rows["seed"].astype("Int64")
    rows = rows[SUMMARY_COLUMNS + [c for c in rows.columns if c not in SUMMARY_COLUMNS]]
    write_csv(out_csv, rows)
    return rows
