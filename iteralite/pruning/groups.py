"""Coupled groups: every tensor slice that must go when one channel of a group goes (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import IteraLiteConfig

KINDS = ("width", "ssm_channels", "expert_hidden", "experts")
@dataclass(frozen=True)
class Slice:
    """Channel c of the group is index offset + c along `axis` of state-dict tensor `param`."""

    param: str
    axis: int
    offset: int = 0


@dataclass
class Group:
    kind: str
    name: str
    size: int
    slices: list[Slice]
    layer: int | None = None
    expert: int | None = None
    channel_params: list[list[str]] = field(default_factory=list)  # whole tensors owned by each channel (experts)


def build_groups(cfg: IteraLiteConfig) -> list[Group]:
    """Every prunable group of a model config."""
    groups = []
    width = [Slice("tok_emb.weight", 1), Slice("pos_emb.weight", 1), Slice("norm_f.weight", 0)]
    for i in range(cfg.n_layers):
        di, p = cfg.layer_d_inner[i], f"layers.{i}.ssm."
        groups.append(
            Group("ssm_channels", f"layer{i}.ssm_channels", di, [
                Slice(p + "in_proj.weight", 0, 0), Slice(p + "in_proj.weight", 0, di),
                Slice(p + "conv1d.weight", 0), Slice(p + "conv1d.bias", 0),
                Slice(p + "delta_proj.weight", 0), Slice(p + "delta_proj.weight", 1), Slice(p + "delta_proj.bias", 0),
                Slice(p + "B", 1), Slice(p + "C", 0), Slice(p + "D", 0), Slice(p + "inner_norm.weight", 0),
                Slice(p + "out_proj.weight", 1),
            ], layer=i)
        )
        m = f"layers.{i}.moe."
        width += [Slice(p + "norm.weight", 0), Slice(p + "in_proj.weight", 1), Slice(p + "out_proj.weight", 0),
                  Slice(m + "norm.weight", 0), Slice(m + "router.weight", 1)]
        experts = []
        for e, hidden in enumerate(cfg.layer_expert_hidden[i]):
            x = f"{m}experts.{e}."
            groups.append(
                Group("expert_hidden", f"layer{i}.expert{e}.hidden", hidden, [
                    Slice(x + "w1.weight", 0), Slice(x + "w1.bias", 0), Slice(x + "w2.weight", 1),
                ], layer=i, expert=e)
            )
            width += [Slice(x + "w1.weight", 1), Slice(x + "w2.weight", 0), Slice(x + "w2.bias", 0)]
            experts.append([x + n for n in ("w1.weight", "w1.bias", "w2.weight", "w2.bias")])
        groups.append(
            Group("experts", f"layer{i}.experts", len(experts), [Slice(m + "router.weight", 0)], layer=i,
                  channel_params=experts)
        )
    groups.insert(0, Group("width", "width", cfg.d_model, width))
    return groups
