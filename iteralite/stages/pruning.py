"""Rules score_importance (per criterion and seed, independent of the targets) and prune (one variant, in one
shot or in steps)."""

from __future__ import annotations

import copy
import logging
import os

import pandas as pd
import torch

from .. import analysis
from ..artifacts import load_torch, save_torch, write_csv, write_json
from ..checkpoint import load_checkpoint, save_checkpoint
from ..pruning import criteria, planner, schedule, surgery
from ..pruning.model_groups import build_groups
from ..tokens import TokenWindows, load_tokens
from ..train import TrainConfig, train

log = logging.getLogger(__name__)


def score_importance(checkpoint: str, tokens_path: str, criterion: str, expert_criterion: str | None,
                     seed: int, calibration: dict | None, device: torch.device, out_scores: str,
                     out_csv: str) -> None:
    """`calibration` ({batches, batch_size, aux_loss_weight}, run on `device`) is given for every criterion but
    random; the expert criterion is None for random scores (which score experts and blocks randomly too); the seed
    draws random scores and calibration windows."""
    model, _ = load_checkpoint(checkpoint)
    train_tokens = load_tokens(tokens_path)[0]["train"] if calibration else None
    scores = _scores(model, criterion, expert_criterion, seed, train_tokens, calibration, device)
    save_torch(out_scores, {"criterion": criterion, "scores": scores})
    groups = {g.name: g for g in build_groups(model.cfg)}
    write_csv(out_csv, pd.DataFrame([
        {"group": name, "kind": groups[name].kind, "layer": groups[name].layer, "expert": groups[name].expert,
         "channel": c, "score": float(v)}
        for name, s in scores.items() for c, v in enumerate(s)
    ]))
    log.info("%s scores for %d groups", criterion, len(scores))


def _scores(model, criterion: str, expert_criterion: str | None, seed: int, train_tokens, calibration: dict | None,
            device: torch.device):
    """Every group's scores; with `calibration`, on calibration batches of `train_tokens` drawn with `seed` (run on a
    copy, so the model scored stays as it was)."""
    stats = criteria.CalibrationStats()
    if calibration:
        windows = TokenWindows(train_tokens, model.cfg.max_seq, calibration["batch_size"], seed)
        batches = [windows.next().to(device) for _ in range(calibration["batches"])]
        stats = criteria.calibrate(copy.deepcopy(model).to(device), batches, calibration["aux_loss_weight"]).to("cpu")
    return criteria.score_groups(model, criterion, stats, seed, expert_criterion)


def prune(variant: str, criterion: str, target, bounds: dict, round_to: dict, pressure: dict, checkpoint: str,
          scores_path: str, out_checkpoint: str, out_stats: str) -> None:
    """One shot: the dense model pruned to the target's plan, keeping the highest-scoring channels."""
    dense, meta = load_checkpoint(checkpoint)
    plan = planner.plan_target(dense.cfg, target, bounds, round_to, pressure)
    counts = planner.plan_counts(dense.cfg, plan["ratios"], plan["round_to"])
    scores = load_torch(scores_path, "importance scores")["scores"]
    kept = surgery.choose_kept(scores, counts)
    pruned = surgery.prune(dense, kept)
    _write(variant, criterion, target, plan, dense, meta, pruned, {n: len(k) for n, k in kept.items()}, checkpoint,
           out_checkpoint, out_stats)


def prune_in_steps(variant: str, criterion: str, target: float, steps: int, bounds: dict, round_to: dict,
                   pressure: dict, checkpoint: str, scores_path: str, tokens_path: str, calibration: dict | None,
                   expert_criterion: str | None, seed: int, recovery: TrainConfig, device: torch.device,
                   out_checkpoint: str, out_stats: str) -> None:
    """The target in `steps` steps: rescored on calibration batches of the model as it is (random: redrawn), and
    `recovery.max_steps` steps of fine-tuning (distilled from the dense model when recovery.distill_weight > 0)
    between steps, both on `device`."""
    dense, meta = load_checkpoint(checkpoint)
    tokens, _ = load_tokens(tokens_path)
    teacher = dense if recovery.distill_weight > 0 else None

    def rescore(model):
        return _scores(model, criterion, expert_criterion, seed, tokens["train"], calibration, device)

    def recover(model, step):
        log.info("%s: recovering after step %d of %d (%d steps)", variant, step, steps, recovery.max_steps)
        model, _ = train(model, tokens["train"], tokens["validation"], recovery, None, teacher, device)
        return model.cpu().eval()

    first = load_torch(scores_path, "importance scores")["scores"]
    pruned = schedule.prune_in_steps(dense, target, steps, bounds, round_to, pressure, first, rescore,
                                     recover)
    plan = planner.plan_target(dense.cfg, target, bounds, round_to, pressure)
    # Kept channels per dense group, by name (an expert renumbered after removals counts under its new index).
    final = {g.name: g.size for g in build_groups(pruned.cfg)}
    _write(variant, criterion, target, plan, dense, meta, pruned, final, checkpoint, out_checkpoint, out_stats)


def _write(variant, criterion, target, plan, dense, meta, pruned, kept_counts: dict, checkpoint, out_checkpoint,
           out_stats) -> None:
    save_checkpoint(out_checkpoint, pruned, meta["tokenizer_sha256"], {"pruned_from": checkpoint, "variant": variant})
    before = analysis.component_totals(analysis.parameter_table(dense)).set_index("component")["params"]
    after = analysis.component_totals(analysis.parameter_table(pruned)).set_index("component")["params"]
    stats = {
        "variant": variant, "criterion": criterion, "target": target, "plan": plan,
        "params_before": int(before.sum()), "params_after": int(after.sum()),
        "removed_fraction": 1 - float(after.sum()) / float(before.sum()),
        "file_bytes_before": os.path.getsize(checkpoint), "file_bytes_after": os.path.getsize(out_checkpoint),
        "by_component": [
            {"component": c, "before": int(before[c]), "after": int(after.get(c, 0))} for c in before.index
        ],
        "groups": [
            {"group": g.name, "kind": g.kind, "layer": g.layer, "expert": g.expert, "total": g.size,
             "kept": kept_counts.get(g.name, 0)}
            for g in build_groups(dense.cfg)
        ],
        "config_after": pruned.cfg.to_dict(),
    }
    write_json(out_stats, stats)
    log.info("%s: %d -> %d parameters (%.1f%% removed)", variant, stats["params_before"], stats["params_after"],
             100 * stats["removed_fraction"])
