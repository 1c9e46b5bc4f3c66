"""IteraLite checkpoints (either architecture): the config that rebuilds the model, its weights and the tokenizer
fingerprint.

A pruned model is an ordinary checkpoint (its config records the kept sizes), so it loads without the pruning code.
"""

from __future__ import annotations

import torch

from .architectures.configs import config_from_dict
from .architectures.models import build_model
from .artifacts import CheckpointError, load_torch, save_torch

CHECKPOINT_FORMAT = "iteralite-checkpoint-v1"


def save_checkpoint(path, model, tokenizer_sha256: str, meta: dict | None = None) -> None:
    """An IteraLite checkpoint: its config (enough to rebuild it), weights and the tokenizer fingerprint."""
    save_torch(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "config": model.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "tokenizer_sha256": tokenizer_sha256,
            "meta": meta or {},
        },
    )


def load_checkpoint(path, device="cpu", blob: dict | None = None) -> tuple:
    """Rebuild the model a checkpoint describes (from `blob` when the file was already loaded); returns (model, the
    checkpoint's other fields)."""
    blob = load_torch(path, "checkpoint") if blob is None else blob
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an IteraLite checkpoint (format {CHECKPOINT_FORMAT} expected)")
    try:
        cfg = config_from_dict(blob["config"])
        with torch.device("meta"):  # no storage: sizes claimed by the file allocate nothing before they are checked
            model = build_model(cfg)
        model.load_state_dict(blob["state_dict"], assign=True)
    except (ValueError, RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not match its model config: {err}") from None
    return model.to(device), {k: v for k, v in blob.items() if k != "state_dict"}
