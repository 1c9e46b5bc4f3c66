"""Rules train_baseline and finetune: one training loop for the baseline, the fine-tunes and the control."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from ..architectures import ModelConfig
from ..architectures.models import build_model
from ..artifacts import write_csv
from ..checkpoint import load_checkpoint, save_checkpoint
from ..provenance import fingerprint
from ..tokens import load_tokens
from ..train import Interrupted, TrainConfig, train

log = logging.getLogger(__name__)


def train_model(settings: TrainConfig, device: torch.device, tokens_path: str, out_checkpoint: str, out_curve: str, *,
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
        {"train": asdict(settings), "device": str(device), "model": model.cfg.to_dict()},
        {"tokens": tokens_path, "init": init_checkpoint, "teacher": teacher_checkpoint if teacher else None},
        __name__,
    )
    resume = Path(out_checkpoint).with_name("train_state.pt")
    log.info("training on %s: %d parameters, resume state %s", device,
             sum(p.numel() for p in model.parameters()), resume)
    try:
        model, curve = train(model, tokens["train"], tokens["validation"], settings, resume, teacher, device,
                             run_fingerprint)
    except Interrupted as err:
        log.warning("%s", err)
        raise SystemExit(75) from None  # non-zero: Snakemake retries, the retry resumes
    model.cpu()
    write_csv(out_curve, pd.DataFrame(curve))
    save_checkpoint(out_checkpoint, model, tokenizer_sha, {"steps": len(curve), "device": str(device)})
    resume.unlink(missing_ok=True)
