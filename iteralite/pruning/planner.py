"""Planning: a global parameter target -> cut ratios per group kind -> kept channel counts per group."""

from __future__ import annotations

import copy
import itertools
import math

from ..architectures import ModelConfig
from ..architectures.configs import parameter_count
from .groups import KINDS, hidden_group_name
from .model_groups import build_groups

PRESETS = {
    # A fixed allocation that keeps the width, and with it the embeddings: SSM channels 25%, expert hidden units
    # 60%. It removes 15.9% of the default model (the planner reports the figure of any model).
    "plan": {"width": 0.0, "ssm_channels": 0.25, "expert_hidden": 0.60, "experts": 0.0},
}

class PlanError(ValueError):
    """An impossible pruning request; the message names the config key and the blocking bound."""


def kept_count(size: int, ratio: float, multiple: int, minimum: int = 1) -> int:
    """Channels kept when `ratio` of `size` goes, rounded half up to a multiple (never below it, nor above size)."""
    keep = size * (1 - ratio)
    if multiple > 1 and size >= multiple:
        keep = max(multiple, math.floor(keep / multiple + 0.5) * multiple)
    return int(min(size, max(minimum, math.floor(keep + 0.5))))


def plan_counts(cfg: ModelConfig, ratios: dict[str, float], round_to: dict[str, int]) -> dict[str, int]:
    """Kept channels per group name."""
    return {
        g.name: g.reachable if g.kind == "vocab"  # the unreachable rows go, whatever the ratios
        else kept_count(g.size, ratios.get(g.kind, 0.0), round_to.get(g.kind, 1))
        for g in build_groups(cfg)
    }


def pruned_config(cfg: ModelConfig, kept: dict[str, int]) -> ModelConfig:
    """The config a plan's counts give. Which experts and blocks go depends on scores; for counting, the
    smallest-index ones stay (all are equal in size before pruning, so the count is exact)."""
    new = copy.deepcopy(cfg)
    new.d_model = kept["width"]
    new.vocab_size = kept.get("vocab", cfg.vocab_size)
    ssm_layers = [i for i in range(cfg.n_layers) if cfg.has_ssm(i)][: kept["ssm_blocks"]]
    moe_layers = [i for i in range(cfg.n_layers) if cfg.has_moe(i)][: kept["moe_blocks"]]
    new.layer_d_inner = [kept[f"layer{i}.ssm_channels"] if i in ssm_layers else 0 for i in range(cfg.n_layers)]
    hidden = []
    for i in range(cfg.n_layers):
        sizes = [kept[hidden_group_name(cfg, i, e)] for e in range(cfg.experts_in(i))]
        hidden.append(sizes[: kept.get(f"layer{i}.experts", len(sizes))] if i in moe_layers else [])
    new.layer_expert_hidden = hidden
    return new


def removed_fraction(cfg: ModelConfig, ratios: dict[str, float], round_to: dict[str, int]) -> float:
    dense = parameter_count(cfg)
    return 1 - parameter_count(pruned_config(cfg, plan_counts(cfg, ratios, round_to))) / dense


def plan_target(cfg: ModelConfig, target, bounds: dict[str, float], round_to: dict[str, int],
                pressure: dict[str, float] | None = None) -> dict:
    """Ratios per kind for a target: a preset name, or a fraction of all parameters to remove.

    For a fraction, one pressure r is raised until the target is met, each kind's ratio being
    min(pressure[kind] * r, its bound): a kind of weight 1.5 is cut 1.5 times as deep as a kind of weight 1 (the
    SSM channels, which cost the most time per parameter). An unreachable target raises PlanError with the largest
    achievable figure and the bound that blocks it.
    """
    if isinstance(target, str):
        if target not in PRESETS:
            raise PlanError(f"pruning.targets: unknown preset {target!r} (presets: {sorted(PRESETS)})")
        ratios = dict(PRESETS[target])
    else:
        if not 0 < target < 1:
            raise PlanError(f"pruning.targets: a parameter target must lie in (0, 1), got {target}")

        weights = {k: (pressure or {}).get(k, 1.0) for k in KINDS}

        def ratios_at(r):
            return {k: min(weights[k] * r, bounds.get(k, 0.0)) for k in KINDS}

        best = removed_fraction(cfg, {k: bounds.get(k, 0.0) for k in KINDS}, round_to)
        if best < target:
            blocking = max(KINDS, key=lambda k: _kind_share(cfg, k) * (1 - bounds.get(k, 0.0)))
            raise PlanError(
                f"pruning.targets: removing {target:.0%} of the parameters is infeasible with pruning.bounds "
                f"{dict(bounds)}: at most {best:.1%} can be removed. The blocking bound is pruning.bounds.{blocking}"
                f"={bounds.get(blocking, 0.0)} ({blocking} groups hold {_kind_share(cfg, blocking):.0%} of the "
                "parameters); raise it or lower the target."
            )
        lo, hi = 0.0, 1.0 / min(weights.values())  # at hi every kind is at its bound
        for _ in range(30):  # bisection on r; removed fraction is monotone in r
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if removed_fraction(cfg, ratios_at(mid), round_to) >= target else (mid, hi)
        ratios = _tightest(cfg, target, ratios_at(hi), round_to)
    removed = removed_fraction(cfg, ratios, round_to)
    return {"target": target, "ratios": ratios, "removed_fraction": removed, "round_to": dict(round_to)}


def _kind_share(cfg: ModelConfig, kind: str) -> float:
    """Fraction of all parameters that pruning this kind alone completely (to one channel) would remove (beyond the
    rows no token reaches, which go at every target)."""
    return removed_fraction(cfg, {kind: 1.0}, {}) - removed_fraction(cfg, {}, {})


def _levels(size: int, cap: float, multiple: int) -> list[float]:
    """The distinct cut ratios that rounding lets a group of `size` take, up to the one ratio `cap` gives."""
    deepest = kept_count(size, cap, multiple)
    counts = {kept_count(size, r / 200, multiple) for r in range(200)} | {deepest}
    return sorted(1 - c / size for c in counts if c >= deepest)


def _tightest(cfg: ModelConfig, target: float, uniform: dict, round_to: dict) -> dict:
    """Rounding makes one pressure overshoot; among allocations that cut no kind deeper than it does,
    take the one that removes the least while meeting the target."""
    sizes = {"width": cfg.d_model, "ssm_channels": cfg.d_inner, "expert_hidden": cfg.expert_hidden,
             "experts": cfg.n_experts, "ssm_blocks": cfg.n_layers, "moe_blocks": cfg.n_layers}
    options = [_levels(sizes[k], uniform[k], round_to.get(k, 1)) for k in KINDS]
    best, best_removed = uniform, removed_fraction(cfg, uniform, round_to)
    for combo in itertools.product(*options):
        ratios = dict(zip(KINDS, combo))
        removed = removed_fraction(cfg, ratios, round_to)
        if target <= removed < best_removed:
            best, best_removed = ratios, removed
    return best
