"""Applying a plan: choose the channels to keep by score, slice every coupled tensor, rebuild a smaller model.

Nothing is masked: the result is an ordinary model of a smaller config, of the same architecture. `masked_model` is
the semantics the tests compare it with: equal for every group of the selective-scan architecture; for the
Itera-Lite architecture, where its LayerNorms and its mean step size make them differ (docs/design.md)."""

from __future__ import annotations

import copy
import math

import torch

from ..architectures.models import build_model
from .groups import BLOCK_KINDS, hidden_group_name
from .model_groups import build_groups


def choose_kept(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Indices kept per group: the highest-scoring channels, in their original order (ties: lower index)."""
    kept = {}
    for name, s in scores.items():
        order = sorted(range(s.numel()), key=lambda c: (-float(s[c]), c))
        kept[name] = torch.tensor(sorted(order[: counts[name]]), dtype=torch.long)
    return kept


def removed_blocks(model_groups: list, kept: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
    """('ssm' or 'moe', layer) of every block the kept indices of the block groups leave out."""
    removed = set()
    for g in model_groups:
        if g.kind in BLOCK_KINDS:
            survivors = set(kept[g.name].tolist())
            removed |= {(BLOCK_KINDS[g.kind], layer) for c, layer in enumerate(g.members) if c not in survivors}
    return removed


def _block_of(group) -> tuple[str, int] | None:
    """The block a per-layer group lives in."""
    if group.kind == "ssm_channels":
        return "ssm", group.layer
    if group.kind in ("expert_hidden", "experts"):
        return "moe", group.layer
    return None


def prune(model, kept: dict[str, torch.Tensor]):
    """A new, physically smaller model of the same architecture keeping the given channels of every group, and the
    given blocks."""
    cfg = model.cfg
    groups = build_groups(cfg)
    removed = removed_blocks(groups, kept)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if not any(k.startswith(f"layers.{i}.{block}.") for block, i in removed)}
    for g in groups:
        if g.kind in BLOCK_KINDS or _block_of(g) in removed:
            continue
        by_axis: dict[tuple[str, int], list[int]] = {}
        for s in g.slices:
            if s.param in state:  # the width group's slices of removed blocks are gone with them
                by_axis.setdefault((s.param, s.axis), []).append(s.offset)
        for (param, axis), offsets in by_axis.items():
            index = torch.cat([o + kept[g.name] for o in sorted(offsets)])
            state[param] = state[param].index_select(axis, index)
        if g.kind == "experts":  # the router rows are sliced above; the surviving experts are renumbered
            _renumber_experts(state, g.channel_params, kept[g.name].tolist())
    new_cfg = copy.deepcopy(cfg)
    new_cfg.d_model = len(kept["width"])
    if "vocab" in kept:  # the rows no token reaches are gone: every row left is reachable
        new_cfg.vocab_size, new_cfg.vocab_reachable = len(kept["vocab"]), 0
    new_cfg.layer_d_inner = [
        len(kept[f"layer{i}.ssm_channels"]) if cfg.has_ssm(i) and ("ssm", i) not in removed else 0
        for i in range(cfg.n_layers)
    ]
    new_cfg.layer_expert_hidden = []
    for i in range(cfg.n_layers):
        if not cfg.has_moe(i) or ("moe", i) in removed:
            new_cfg.layer_expert_hidden.append([])
            continue
        survivors = kept[f"layer{i}.experts"].tolist() if cfg.is_routed(i) else [0]
        new_cfg.layer_expert_hidden.append([len(kept[hidden_group_name(cfg, i, e)]) for e in survivors])
    new_cfg.validate()
    pruned = build_model(new_cfg)
    pruned.load_state_dict(state)
    return pruned


def _renumber_experts(state: dict, expert_params: list[list[str]], survivors: list[int]) -> None:
    """Expert `old` of the survivors becomes expert `new` (its position among them); the others go."""
    renamed = {
        name.replace(f"experts.{old}.", f"experts.{new}.", 1): state[name]
        for new, old in enumerate(survivors) for name in expert_params[old]
    }
    for name in (n for params in expert_params for n in params):
        del state[name]
    state.update(renamed)


def masked_model(model, kept: dict[str, torch.Tensor]):
    """The masked semantics of pruning: the dense model with every dropped channel's slices zeroed, dropped
    experts removed from routing (their router logit forced to -inf), and dropped blocks skipped."""
    masked = copy.deepcopy(model)
    state = masked.state_dict()
    groups = build_groups(model.cfg)
    with torch.no_grad():
        for g in groups:
            dropped = sorted(set(range(g.size)) - set(kept[g.name].tolist()))
            if not dropped or g.kind in ("experts", "vocab") or g.kind in BLOCK_KINDS:
                continue
            for s in g.slices:
                state[s.param].index_fill_(s.axis, torch.tensor(dropped) + s.offset, 0.0)
    for i, moe in masked.routed_blocks().items():
        dropped = sorted(set(range(len(moe.experts))) - set(kept[f"layer{i}.experts"].tolist()))
        if dropped:
            moe.gate.register_forward_hook(_mask_logits(dropped))
    if "vocab" in kept:  # rows no longer predicted: their logits at -inf
        dropped = sorted(set(range(model.cfg.vocab_size)) - set(kept["vocab"].tolist()))
        head = masked.head
        masked.head = lambda hidden: head(hidden).index_fill(-1, torch.tensor(dropped), -math.inf)
    for block, i in removed_blocks(groups, kept):
        del masked.layers[i][block]  # the layer's forward passes the residual stream through
    return masked


def _mask_logits(dropped: list[int]):
    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., dropped] = -math.inf
        return logits

    return hook
