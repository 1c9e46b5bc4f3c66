"""Rule analyze: where the baseline's parameters are."""

from __future__ import annotations

import logging

import pandas as pd

from .. import analysis
from ..artifacts import write_csv, write_json
from ..checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def analyze(checkpoint: str, out_json: str, out_csv: str, out_groups: str) -> None:
    model, fields = load_checkpoint(checkpoint)
    result = analysis.analyze(model)
    result["source"] = (fields.get("meta") or {}).get("imported")  # an imported baseline: its file and layout
    write_json(out_json, result)
    write_csv(out_csv, pd.DataFrame(result["by_component_and_layer"]))
    write_csv(out_groups, pd.DataFrame(result["groups"]))
    log.info("analysis: %d parameters", result["total_params"])
