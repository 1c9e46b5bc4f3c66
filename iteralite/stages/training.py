"""Rules train_baseline and finetune: one training loop for the baseline, the fine-tunes and the control."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from ..architectures import ModelConfig, build_model
from ..artifacts import CheckpointError, write_csv
from ..checkpoint import load_checkpoint, read_user_checkpoint, save_checkpoint
from ..data import load_tokens
from ..provenance import file_sha256, fingerprint
from ..train import Interrupted, TrainConfig, pick_device, train

log = logging.getLogger(__name__)


def train_model(settings: TrainConfig, device: str, tokens_path: str, out_checkpoint: str, out_curve: str, *,
                model_cfg: ModelConfig | None = None, init_checkpoint: str | None = None,
                teacher_checkpoint: str | None = None) -> None:
    """The baseline (a fresh model of `model_cfg`, seeded by settings.seed), a fine-tune or the control (from
    `init_checkpoint`). Resumable through a state file beside the checkpoint that is no declared output, so a failed
    job keeps it for its retry; the state carries a fingerprint of everything that determines the run."""
    tokens, tokenizer_sha = load_tokens(tokens_path)
    if init_checkpoint:
        model, _ = load_checkpoint(init_checkpoint)
    else:
        torch.manual_seed(settings.seed)
        model = build_model(model_cfg)
    teacher = load_checkpoint(teacher_checkpoint)[0] if teacher_checkpoint and settings.distill_weight > 0 else None
    run_fingerprint = fingerprint(
        {"train": asdict(settings), "device": device, "model": model.cfg.to_dict()},
        {"tokens": tokens_path, "init": init_checkpoint, "teacher": teacher_checkpoint if teacher else None},
        __name__,
    )
    resume = Path(out_checkpoint).with_name("train_state.pt")
    torch_device = pick_device(device)
    log.info("training on %s: %d parameters, resume state %s", torch_device,
             sum(p.numel() for p in model.parameters()), resume)
    try:
        model, curve = train(model, tokens["train"], tokens["validation"], settings, resume, teacher, torch_device,
                             run_fingerprint)
    except Interrupted as err:
        log.warning("%s", err)
        raise SystemExit(75) from None  # non-zero: Snakemake retries, the retry resumes
    model.cpu()
    write_csv(out_curve, pd.DataFrame(curve))
    save_checkpoint(out_checkpoint, model, tokenizer_sha, {"steps": len(curve), "device": str(torch_device)})
    resume.unlink(missing_ok=True)


def use_checkpoint(model_cfg: ModelConfig, user_checkpoint: str, tokens_path: str, out_checkpoint: str,
                   out_curve: str) -> None:
    """A user-supplied baseline, checked against the study's model config and tokenizer, then written as this
    package's checkpoint: one of its own (trained with the study's tokenizer), or one the Itera-Lite code wrote,
    imported (its meta says from which file, its SHA-256, the layout found and what was inferred)."""
    model, found = read_user_checkpoint(user_checkpoint, model_cfg.top_k)
    expected = model_cfg.to_dict()
    if found["format"] == "Itera-Lite":  # the rows the study's tokenizer reaches are the study's to say
        model.cfg.vocab_reachable = model_cfg.vocab_reachable
    actual = model.cfg.to_dict()
    if actual != expected:
        diff = {k: (actual.get(k), v) for k, v in expected.items() if actual.get(k) != v}
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
