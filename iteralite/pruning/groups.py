"""Coupled groups: every tensor slice that must go when one channel of a group goes (see the package docstring)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..modelconfig import IteraLiteConfig

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


def ssm_params(cfg: IteraLiteConfig, i: int) -> list[str]:
    p = f"layers.{i}.ssm."
    return [p + n for n in ("norm.weight", "in_proj.weight", "conv1d.weight", "conv1d.bias", "delta_proj.weight",
                            "delta_proj.bias", "A_log", "B", "C", "D", "inner_norm.weight", "out_proj.weight")]


def moe_params(cfg: IteraLiteConfig, i: int) -> list[str]:
    m = f"layers.{i}.moe."
    experts = [f"{m}experts.{e}.{leaf}" for e in range(cfg.experts_in(i))
               for leaf in ("w1.weight", "w1.bias", "w2.weight", "w2.bias")]
    return [m + "norm.weight", m + "router.weight", *experts]


def build_groups(cfg) -> list[Group]:
    """Every prunable group of a model config, as its architecture declares them (blocks a layer no longer has have
    no groups), and the table's rows no token reaches, where there are such rows."""
    if cfg.architecture == "reference":
        from ..reference.groups import build_groups as reference_groups

        groups, table = reference_groups(cfg), "embedding.weight"
    else:
        groups, table = build_project_groups(cfg), "tok_emb.weight"
    if cfg.reachable_rows < cfg.vocab_size:
        groups.append(vocab_group(cfg, table))
    return groups


def vocab_group(cfg, table: str) -> Group:
    """The rows of the tied table: those past the tokenizer's ids are never read (no id maps to them) and never
    predicted (no target is one of them), so they go whatever the target; the others always stay."""
    return Group("vocab", "vocab", cfg.vocab_size, [Slice(table, 0)], reachable=cfg.reachable_rows)


def build_project_groups(cfg: IteraLiteConfig) -> list[Group]:
    """The project architecture's groups (module docstring of iteralite.pruning)."""
    groups = []
    width = [Slice("tok_emb.weight", 1), Slice("pos_emb.weight", 1), Slice("norm_f.weight", 0)]
    for i in range(cfg.n_layers):
        p, m = f"layers.{i}.ssm.", f"layers.{i}.moe."
        if cfg.has_ssm(i):
            di = cfg.layer_d_inner[i]
            groups.append(
                Group("ssm_channels", f"layer{i}.ssm_channels", di, [
                    Slice(p + "in_proj.weight", 0, 0), Slice(p + "in_proj.weight", 0, di),
                    Slice(p + "conv1d.weight", 0), Slice(p + "conv1d.bias", 0),
                    Slice(p + "delta_proj.weight", 0), Slice(p + "delta_proj.weight", 1),
                    Slice(p + "delta_proj.bias", 0), Slice(p + "B", 1), Slice(p + "C", 0), Slice(p + "D", 0),
                    Slice(p + "inner_norm.weight", 0), Slice(p + "out_proj.weight", 1),
                ], layer=i)
            )
            width += [Slice(p + "norm.weight", 0), Slice(p + "in_proj.weight", 1), Slice(p + "out_proj.weight", 0)]
        if not cfg.has_moe(i):
            continue
        width += [Slice(m + "norm.weight", 0), Slice(m + "router.weight", 1)]
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
    for kind, has, params in (("ssm_blocks", cfg.has_ssm, ssm_params), ("moe_blocks", cfg.has_moe, moe_params)):
        layers = [i for i in range(cfg.n_layers) if has(i)]
        groups.append(Group(kind, kind, len(layers), [], channel_params=[params(cfg, i) for i in layers],
                            members=layers))
    groups.insert(0, Group("width", "width", cfg.d_model, width))
    return groups


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
