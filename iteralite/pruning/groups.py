"""Coupled groups: every tensor slice that must go when one channel of a group goes (see the package docstring).
Each architecture's groups.py declares its groups with these types (model_groups.build_groups asks it)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

KINDS = ("width", "ssm_channels", "expert_hidden", "experts", "ssm_blocks", "moe_blocks")
BLOCK_KINDS = {"ssm_blocks": "ssm", "moe_blocks": "moe"}


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
    channel_params: list[list[str]] = field(default_factory=list)  # whole tensors owned by each channel
    members: list[int] = field(default_factory=list)  # block groups: the layer of each channel
    reachable: int | None = None  # the vocab group: its first rows, which token ids reach, always stay


def hidden_group_name(cfg, layer: int, expert: int) -> str:
    """The name of an expert's hidden-unit group (a feed-forward block's, where the layer does not route)."""
    return f"layer{layer}.expert{expert}.hidden" if cfg.is_routed(layer) else f"layer{layer}.ffn.hidden"


def vocab_group(cfg, table: str) -> Group:
    """The rows of the tied table: those past the tokenizer's ids are never read (no id maps to them) and never
    predicted (no target is one of them), so they go whatever the target; the others always stay."""
    return Group("vocab", "vocab", cfg.vocab_size, [Slice(table, 0)], reachable=cfg.reachable_rows)


@contextlib.contextmanager
def skipped(layer, key: str):
    """Within the block, the layer passes its input through, as if its block `key` had been removed (an SSM block
    returns its input, an MoE or feed-forward block its input and no balance loss)."""
    block = layer[key]
    block.forward = (lambda u: (u, u.new_zeros(()))) if key == "moe" else (lambda u: u)
    try:
        yield block
    finally:
        del block.forward
