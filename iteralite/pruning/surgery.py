"""Applying a plan: choose the channels to keep by score, slice every coupled tensor, rebuild a smaller model.

Nothing is masked: the result is an ordinary IteraLite of a smaller config. `masked_model` is the reference semantics
the tests compare it with."""

from __future__ import annotations

import copy
import math

import torch

from ..model import IteraLite
from .groups import build_groups


def choose_kept(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Indices kept per group: the highest-scoring channels, in their original order (ties: lower index)."""
    kept = {}
    for name, s in scores.items():
        order = sorted(range(s.numel()), key=lambda c: (-float(s[c]), c))
        kept[name] = torch.tensor(sorted(order[: counts[name]]), dtype=torch.long)
    return kept


def prune(model: IteraLite, kept: dict[str, torch.Tensor]) -> IteraLite:
    """A new, physically smaller IteraLite keeping the given channels of every group."""
    cfg = model.cfg
    groups = build_groups(cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for g in groups:
        if g.kind == "experts":
            continue
        by_axis: dict[tuple[str, int], list[int]] = {}
        for s in g.slices:
            by_axis.setdefault((s.param, s.axis), []).append(s.offset)
        for (param, axis), offsets in by_axis.items():
            index = torch.cat([o + kept[g.name] for o in sorted(offsets)])
            state[param] = state[param].index_select(axis, index)
    new_cfg = copy.deepcopy(cfg)
    new_cfg.d_model = len(kept["width"])
    new_cfg.layer_d_inner = [len(kept[f"layer{i}.ssm_channels"]) for i in range(cfg.n_layers)]
    new_cfg.layer_expert_hidden = []
    for i in range(cfg.n_layers):
        survivors = kept[f"layer{i}.experts"].tolist()
        prefix = f"layers.{i}.moe."
        state[prefix + "router.weight"] = state[prefix + "router.weight"][survivors]
        renamed = {}
        for new_e, old_e in enumerate(survivors):
            for leaf in ("w1.weight", "w1.bias", "w2.weight", "w2.bias"):
                renamed[f"{prefix}experts.{new_e}.{leaf}"] = state[f"{prefix}experts.{old_e}.{leaf}"]
        for key in [k for k in state if k.startswith(prefix + "experts.")]:
            del state[key]
        state.update(renamed)
        new_cfg.layer_expert_hidden.append([len(kept[f"layer{i}.expert{e}.hidden"]) for e in survivors])
    new_cfg.validate()
    pruned = IteraLite(new_cfg)
    pruned.load_state_dict(state)
    return pruned


def masked_model(model: IteraLite, kept: dict[str, torch.Tensor]) -> IteraLite:
    """The reference semantics of pruning: the dense model with every dropped channel's slices zeroed, and dropped
    experts removed from routing (their router logit forced to -inf)."""
    masked = copy.deepcopy(model)
    state = masked.state_dict()
    with torch.no_grad():
        for g in build_groups(model.cfg):
            dropped = sorted(set(range(g.size)) - set(kept[g.name].tolist()))
            if not dropped or g.kind == "experts":
                continue
            for s in g.slices:
                state[s.param].index_fill_(s.axis, torch.tensor(dropped) + s.offset, 0.0)
    for i, layer in enumerate(masked.layers):
        n_experts = len(layer["moe"].experts)
        dropped = sorted(set(range(n_experts)) - set(kept[f"layer{i}.experts"].tolist()))
        if dropped:
            layer["moe"].router.register_forward_hook(_mask_logits(dropped))
    return masked


def _mask_logits(dropped: list[int]):
    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., dropped] = -math.inf
        return logits

    return hook
