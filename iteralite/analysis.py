"""Where the parameters are: counts by component and layer, and the prunable groups with their sizes."""

from __future__ import annotations

import re

import pandas as pd

from .model import IteraLite
from .pruning.groups import build_groups

# (pattern on the state-dict name, component); the first match wins.
COMPONENTS = [
    (r"tok_emb\.", "token embedding (tied LM head)"),
    (r"pos_emb\.", "position embedding"),
    (r"ssm\.in_proj\.", "ssm.in_proj"),
    (r"ssm\.conv1d\.", "ssm.conv1d"),
    (r"ssm\.(A_log|B|C|D)$", "ssm.state (A_log, B, C, D)"),
    (r"ssm\.delta_proj\.", "ssm.delta_proj"),
    (r"ssm\.out_proj\.", "ssm.out_proj"),
    (r"ssm\.(norm|inner_norm)\.", "ssm.norms"),
    (r"moe\.router\.", "moe.router"),
    (r"moe\.experts\.", "moe.experts"),
    (r"moe\.norm\.", "moe.norm"),
    (r"norm_f\.", "final norm"),
]


def component_of(name: str) -> str:
    for pattern, component in COMPONENTS:
        if re.search(pattern, name):
            return component
    raise KeyError(f"parameter {name} matches no component")


def parameter_table(model: IteraLite) -> pd.DataFrame:
    """One row per (component, layer): params and percent of the model's unique parameters."""
    rows = []
    for name, p in model.named_parameters():
        match = re.match(r"layers\.(\d+)\.", name)
        layer = int(match.group(1)) if match else -1
        rows.append({"component": component_of(name), "layer": layer, "params": p.numel()})
    table = pd.DataFrame(rows).groupby(["component", "layer"], as_index=False, sort=False)["params"].sum()
    table["percent"] = 100 * table["params"] / table["params"].sum()
    return table


def component_totals(table: pd.DataFrame) -> pd.DataFrame:
    totals = table.groupby("component", as_index=False, sort=False)[["params", "percent"]].sum()
    return totals.sort_values("params", ascending=False, ignore_index=True)


def group_table(model: IteraLite) -> pd.DataFrame:
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


def analyze(model: IteraLite) -> dict:
    table = parameter_table(model)
    return {
        "total_params": int(table["params"].sum()),
        "config": model.cfg.to_dict(),
        "by_component": component_totals(table).to_dict(orient="records"),
        "by_component_and_layer": table.to_dict(orient="records"),
        "groups": group_table(model).to_dict(orient="records"),
    }
