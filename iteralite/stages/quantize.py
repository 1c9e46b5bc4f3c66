"""Rule quantize: an INT4 copy of a checkpoint."""

from __future__ import annotations

import logging
import os

from .. import quant
from ..artifacts import write_json
from ..checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def quantize(checkpoint: str, group_size: int, keep_high_precision: list[str], out_model: str, out_stats: str) -> None:
    model, meta = load_checkpoint(checkpoint)
    blob, stats = quant.quantize_model(model, group_size, keep_high_precision, meta["tokenizer_sha256"])
    quant.save_quantized(out_model, blob)
    stats.update({"source": checkpoint, "source_bytes": os.path.getsize(checkpoint),
                  "file_bytes": os.path.getsize(out_model)})
    write_json(out_stats, stats)
    log.info("INT4: %.2f bits/param, %d -> %d bytes", stats["bits_per_param"], stats["source_bytes"],
             stats["file_bytes"])
