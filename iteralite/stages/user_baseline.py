"""Rule train_baseline with model.checkpoint: the user's baseline instead of a trained one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..architectures import ITERA_LITE_FILES, ModelConfig, facet
from ..architectures.configs import differences
from ..artifacts import CheckpointError, write_csv
from ..checkpoint import save_checkpoint
from ..provenance import file_sha256
from ..tokens import load_tokens


def use_checkpoint(model_cfg: ModelConfig, user_checkpoint: str, tokens_path: str, out_checkpoint: str,
                   out_curve: str) -> None:
    """A user-supplied baseline, checked against the study's model config and tokenizer, then written as this
    package's checkpoint: one of its own (trained with the study's tokenizer), or one the Itera-Lite code wrote,
    imported (its meta says from which file, its SHA-256, the layout found and what was inferred)."""
    convert = facet(ITERA_LITE_FILES, "convert")
    model, found = convert.read_user_checkpoint(user_checkpoint, model_cfg.top_k)
    if found["format"] == "Itera-Lite":  # the rows the tokenizer reaches and the window are the study's to say
        model.cfg.vocab_reachable = model_cfg.vocab_reachable
        if model_cfg.max_seq < model.cfg.max_seq:
            found["window"] = (f"the first {model_cfg.max_seq} of the file's {model.cfg.max_seq} positions "
                               "(model.max_seq)")
            convert.with_window(model, model_cfg.max_seq)
    diff = differences(model.cfg, model_cfg)  # as the parse found (iteralite.study); the file may have changed since
    if diff:
        raise CheckpointError(f"model.checkpoint {user_checkpoint} does not match the config's model: {diff}")
    _, tokenizer_sha = load_tokens(tokens_path)
    if found["format"] == "Itera-Lite":
        meta = {"imported": {"file": Path(user_checkpoint).name, "sha256": file_sha256(user_checkpoint),
                             **{k: v for k, v in found.items() if k != "format"}}}
    elif found.get("tokenizer_sha256") != tokenizer_sha:
        raise CheckpointError(f"model.checkpoint {user_checkpoint} was trained with another tokenizer")
    else:
        meta = found.get("meta")
    write_csv(out_curve, pd.DataFrame(columns=["step", "train_loss", "val_ppl"]))
    save_checkpoint(out_checkpoint, model, tokenizer_sha, meta)
