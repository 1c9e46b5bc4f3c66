"""Rule summary: the study's main table (results/metrics/summary.csv) from every model's metrics, the exports'
verification records and the speed table. Torch-free: it reads JSON and CSV only."""

from __future__ import annotations

import os

import pandas as pd

from .. import naming
from ..artifacts import read_json, write_csv

SUMMARY_COLUMNS = ["model", "runtime", "stage", "criterion", "target", "method", "seed", "params", "file_bytes",
                   "test_ppl", "test_tokens", "tokens_per_s", "step_latency_ms"]
SPEED_COLUMNS = ["tokens_per_s", "step_latency_ms", "peak_mem_mb", "weight_mem_mb", "serve_rss_mb", "int4_path"]
SERVED_COLUMNS = ["served_clients", "served_tokens_per_s", "served_token_p95_ms"]


def export_row(manifest_path: str, torch_row: dict) -> dict:
    """An exported model in ONNX Runtime: its torch row's recipe and parameters; the two graphs' bytes; the test
    perplexity through ONNX Runtime (on the windows of the torch row's test_ppl, export.verify)."""
    manifest = read_json(manifest_path)
    graphs = os.path.dirname(manifest_path)
    verification = manifest["verification"]
    return {**torch_row, "runtime": "onnxruntime",
            "file_bytes": sum(os.path.getsize(os.path.join(graphs, g["file"])) for g in manifest["graphs"].values()),
            "test_ppl": verification["onnxruntime_perplexity"], "test_tokens": verification["perplexity_tokens"]}


def served_columns(load_csv: str) -> pd.DataFrame:
    """Per exported model, its HTTP server at the most concurrent clients measured (served_clients): throughput
    (served_tokens_per_s) and 95th-percentile time per token (served_token_p95_ms); results/bench/load.csv has
    every client count."""
    load = pd.read_csv(load_csv)
    top = load[load["clients"] == load["clients"].max()]
    return top.rename(columns={"clients": "served_clients", "tokens_per_s": "served_tokens_per_s",
                               "token_p95_ms": "served_token_p95_ms"})[["model", *SERVED_COLUMNS]]


def summarize(metric_paths: list[str], export_manifests: list[str], speed_csv: str, load_csv: str,
              out_csv: str) -> pd.DataFrame:
    """One row per model, seed and runtime. Speed in torch was measured for one seed of each family (its
    architecture is the same for every seed), so each torch row takes its family's speed; an ONNX Runtime row
    takes its own model's, and its HTTP server's under load."""
    torch_rows = {row["model"]: {**row, "runtime": "torch"} for row in map(read_json, metric_paths)}
    exported = [export_row(path, torch_rows[read_json(path)["model"]]) for path in export_manifests]
    speed = pd.read_csv(speed_csv)
    on_torch = speed[speed["runtime"] == "torch"][["model", *SPEED_COLUMNS]]
    on_torch["family"] = on_torch.pop("model").map(lambda m: naming.describe(m)["family"])
    rows = pd.DataFrame(list(torch_rows.values())).merge(on_torch, on="family", how="left")
    if exported:
        on_onnx = speed[speed["runtime"] == "onnxruntime"][["model", *SPEED_COLUMNS]]
        on_onnx = on_onnx.merge(served_columns(load_csv), on="model", how="left")
        rows = pd.concat([rows, pd.DataFrame(exported).merge(on_onnx, on="model", how="left")], ignore_index=True)
    rows = rows.reindex(columns=[*rows.columns.drop(SERVED_COLUMNS, errors="ignore"), *SERVED_COLUMNS])
    rows["seed"] = rows["seed"].astype("Int64")
    rows = rows[SUMMARY_COLUMNS + [c for c in rows.columns if c not in SUMMARY_COLUMNS]]
    write_csv(out_csv, rows)
    return rows
