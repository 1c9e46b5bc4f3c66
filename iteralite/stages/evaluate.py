"""Rules evaluate (one model's test perplexity) and summary (the study's main table)."""

from __future__ import annotations

import logging
import os

import pandas as pd

from .. import naming, quant
from ..artifacts import read_json, write_csv, write_json
from ..data import eval_windows, load_tokens
from ..model import count_parameters
from ..train import perplexity

log = logging.getLogger(__name__)

# Test perplexity of an INT4 model always takes this path: weights dequantized once at load, float32 matmuls, so
# the number is the same on every run and machine (the speed benchmark may time other paths).
EVALUATION_INT4_PATH = "unpacked"


def model_row(model_id: str, path: str, model) -> dict:
    """The summary.csv columns every stage knows: the name and what it encodes (naming.describe), params, bytes."""
    return {
        "model": model_id,
        **naming.describe(model_id),
        "params": getattr(model, "n_params", None) or count_parameters(model),
        "file_bytes": os.path.getsize(path),
    }


def evaluate(model_id: str, model_path: str, tokens_path: str, test_tokens: int, out_json: str) -> None:
    model = quant.load_model(model_path, EVALUATION_INT4_PATH)
    tokens, _ = load_tokens(tokens_path)
    row = model_row(model_id, model_path, model)
    row["test_ppl"] = perplexity(model, tokens["test"], test_tokens)
    row["test_tokens"] = int(eval_windows(tokens["test"], model.cfg.max_seq, test_tokens)[:, 1:].numel())
    if tokens["test"].numel() - 1 < test_tokens:
        log.warning("%s: the test split has only %d tokens, fewer than evaluate.test_tokens=%d; the perplexity is "
                    "over the %d it holds in whole windows", model_id, tokens["test"].numel(), test_tokens,
                    row["test_tokens"])
    write_json(out_json, row)
    log.info("%s: test perplexity %.2f, %d parameters, %d bytes", model_id, row["test_ppl"], row["params"],
             row["file_bytes"])


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
