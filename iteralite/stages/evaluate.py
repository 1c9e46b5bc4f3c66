"""Rule evaluate: one model's test perplexity, parameters and file size."""

from __future__ import annotations

import logging
import os

import torch

from .. import naming, quant
from ..artifacts import write_json
from ..layers import count_parameters
from ..tokens import eval_windows, load_tokens
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


def evaluate(model_id: str, model_path: str, tokens_path: str, test_tokens: int, device: torch.device,
             out_json: str) -> None:
    """On the config's device (train.pick_device): with `auto`, a GPU where the job has one, so that it does not
    idle."""
    model = quant.load_model(model_path, EVALUATION_INT4_PATH, device)
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
