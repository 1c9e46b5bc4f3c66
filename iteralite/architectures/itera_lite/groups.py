"""The Itera-Lite architecture's coupled groups: the same kinds as the selective-scan architecture's
(iteralite.pruning), over its own tensors. Torch-free: the planner counts them when the workflow is parsed.

- ssm_channels (per layer, d_inner): in_proj rows of x and of the gate, conv1d channel, delta_proj rows and columns
  and bias, B columns, C rows, D entries, out_proj columns.
- expert_hidden (per expert, and per feed-forward block): w1 rows, w2 columns (no biases).
- experts (per MoE layer): the expert's w1 and w2, and its router row; feed-forward layers have no such group.
- width (d_model): both embeddings' columns, every LayerNorm's weight and bias, in_proj columns, out_proj rows,
  router columns, w1 columns, w2 rows.
- ssm_blocks, moe_blocks (depth): a whole SSM block, or a layer's whole MoE or feed-forward block.
Where pruning equals masking here and where it does not: docs/design.md ("The Itera-Lite architecture").
"""

from __future__ import annotations

from ...pruning.groups import Group, Slice, hidden_group_name, vocab_group
from .config import Config

SSM_TENSORS = ("norm.weight", "norm.bias", "in_proj.weight", "conv1d.weight", "conv1d.bias", "ssm.A_log", "ssm.B",
               "ssm.C", "ssm.D", "ssm.delta_proj.weight", "ssm.delta_proj.bias", "out_proj.weight")


def second_block_prefix(cfg: Config, i: int) -> str:
    """Where a layer's MoE block (`moe.layer.`) or feed-forward block (`moe.`) keeps its norm."""
    return f"layers.{i}.moe.layer." if cfg.is_routed(i) else f"layers.{i}.moe."


def expert_prefixes(cfg: Config, i: int) -> list[str]:
    if cfg.is_routed(i):
        return [f"layers.{i}.moe.layer.experts.{e}." for e in range(cfg.experts_in(i))]
    return [f"layers.{i}.moe.ffn."]


def moe_params(cfg: Config, i: int) -> list[str]:
    m = second_block_prefix(cfg, i)
    router = [m + "router.gate.weight"] if cfg.is_routed(i) else []
    experts = [x + leaf for x in expert_prefixes(cfg, i) for leaf in ("w1.weight", "w2.weight")]
    return [m + "norm.weight", m + "norm.bias", *router, *experts]


def build_groups(cfg: Config) -> list[Group]:
    """Every group of the config (blocks a layer no longer has have no groups), and the rows no token reaches."""
    groups = []
    width = [Slice("embedding.weight", 1), Slice("position_embedding.weight", 1), Slice("norm.weight", 0),
             Slice("norm.bias", 0)]
    for i in range(cfg.n_layers):
        p = f"layers.{i}.ssm."
        if cfg.has_ssm(i):
            di = cfg.layer_d_inner[i]
            groups.append(
                Group("ssm_channels", f"layer{i}.ssm_channels", di, [
                    Slice(p + "in_proj.weight", 0, 0), Slice(p + "in_proj.weight", 0, di),
                    Slice(p + "conv1d.weight", 0), Slice(p + "conv1d.bias", 0),
                    Slice(p + "ssm.delta_proj.weight", 0), Slice(p + "ssm.delta_proj.weight", 1),
                    Slice(p + "ssm.delta_proj.bias", 0), Slice(p + "ssm.B", 1), Slice(p + "ssm.C", 0),
                    Slice(p + "ssm.D", 0), Slice(p + "out_proj.weight", 1),
                ], layer=i)
            )
            width += [Slice(p + "norm.weight", 0), Slice(p + "norm.bias", 0), Slice(p + "in_proj.weight", 1),
                      Slice(p + "out_proj.weight", 0)]
        if not cfg.has_moe(i):
            continue
        m = second_block_prefix(cfg, i)
        width += [Slice(m + "norm.weight", 0), Slice(m + "norm.bias", 0)]
        experts = []
        for e, (x, hidden) in enumerate(zip(expert_prefixes(cfg, i), cfg.layer_expert_hidden[i])):
            groups.append(
                Group("expert_hidden", hidden_group_name(cfg, i, e), hidden,
                      [Slice(x + "w1.weight", 0), Slice(x + "w2.weight", 1)], layer=i, expert=e)
            )
            width += [Slice(x + "w1.weight", 1), Slice(x + "w2.weight", 0)]
            experts.append([x + "w1.weight", x + "w2.weight"])
        if cfg.is_routed(i):
            width.append(Slice(m + "router.gate.weight", 1))
            groups.append(Group("experts", f"layer{i}.experts", len(experts), [Slice(m + "router.gate.weight", 0)],
                                layer=i, channel_params=experts))
    for kind, has, params in (("ssm_blocks", cfg.has_ssm, lambda i: [f"layers.{i}.ssm." + t for t in SSM_TENSORS]),
                              ("moe_blocks", cfg.has_moe, lambda i: moe_params(cfg, i))):
        layers = [i for i in range(cfg.n_layers) if has(i)]
        groups.append(Group(kind, kind, len(layers), [], channel_params=[params(i) for i in layers], members=layers))
    groups.insert(0, Group("width", "width", cfg.d_model, width))
    if cfg.reachable_rows < cfg.vocab_size:
        groups.append(vocab_group(cfg, "embedding.weight"))
    return groups
