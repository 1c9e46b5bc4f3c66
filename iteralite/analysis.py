"""Where the parameters are: counts by component and layer, and the prunable groups with their sizes."""

from __future__ import annotations

import re

import pandas as pd

from .architectures import facet
from .pruning.model_groups import build_groups

# The coarse categories every architecture's COMPONENTS table (its config.py) sorts its parameters into.
CATEGORIES = ["embeddings", "position embeddings", "SSM blocks", "MoE and feed-forward blocks", "norms"]


def _match(cfg, name: str) -> tuple[str, str, str]:
    """(pattern, component, category) of a parameter, from its architecture's table (config.py's COMPONENTS)."""
    for entry in facet(cfg.architecture, "config").COMPONENTS:
        if re.search(entry[0], name):
            return entry
    raise KeyError(f"parameter {name} matches no component of the {cfg.architecture} architecture")


def category_breakdown(model) -> list[dict]:
    """The parameters in coarse categories (embeddings, positions, SSM blocks, MoE and feed-forward blocks, norms),
    with the LM head, tied to the token table, at 0."""
    counts = dict.fromkeys(CATEGORIES, 0)
    for name, p in model.named_parameters():
        counts[_match(model.cfg, name)[2]] += p.numel()
    total = sum(counts.values())
    rows = [{"category": c, "params": n, "percent": 100 * n / total} for c, n in counts.items()]
    return rows + [{"category": "LM head (tied)", "params": 0, "percent": 0.0}]


def parameter_table(model) -> pd.DataFrame:
    """One row per (component, layer): params and percent of the model's unique parameters."""
    rows = []
    for name, p in model.named_parameters():
        match = re.match(r"layers\.(\d+)\.", name)
        layer = int(match.group(1)) if match else -1
        rows.append({"component": _match(model.cfg, name)[1], "layer": layer, "params": p.numel()})
    table = pd.DataFrame(rows).groupby(["component", "layer"], as_index=False, sort=False)["params"].sum()
    table["percent"] = 100 * table["params"] / table["params"].sum()
    return table


def component_totals(table: pd.DataFrame) -> pd.DataFrame:
    totals = table.groupby("component", as_index=False, sort=False)[["params", "percent"]].sum()
    return totals.sort_values("params", ascending=False, ignore_index=True)


def group_table(model) -> pd.DataFrame:
    """The prunable groups: kind, name, layer, expert, channels, tensors they touch."""
    return pd.DataFrame(
        [
            {
                "kind": g.kind, "group": g.name, "layer": g.layer if g.layer is not None else -1,
                "expert": g.expert if g.expert is not None else -1, "channels": g.size,
                "coupled_tensors": len({s.param for s in g.slices}) + sum(len(c) for c in g.channel_params),
            }
            for g in build_groups(model.cfg)
        ]
    )


def analyze(model) -> dict:
    table = parameter_table(model)
    return {
        "total_params": int(table["params"].sum()),
        "config": model.cfg.to_dict(),
        "by_component": component_totals(table).to_dict(orient="records"),
        "category_breakdown": category_breakdown(model),
        "by_component_and_layer": table.to_dict(orient="records"),
        "groups": group_table(model).to_dict(orient="records"),
    }
