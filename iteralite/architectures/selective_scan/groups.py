"""The selective-scan architecture's coupled groups (kinds and tensors: the docstring of iteralite.pruning).
Torch-free: the planner counts them when the workflow is parsed."""

from __future__ import annotations

from ...pruning.groups import Group, Slice, vocab_group
from .config import Config


def ssm_params(cfg: Config, i: int) -> list[str]:
    p = f"layers.{i}.ssm."
    return [p + n for n in ("norm.weight", "in_proj.weight", "conv1d.weight", "conv1d.bias", "delta_proj.weight",
                            "delta_proj.bias", "A_log", "B", "C", "D", "inner_norm.weight", "out_proj.weight")]


def moe_params(cfg: Config, i: int) -> list[str]:
    m = f"layers.{i}.moe."
    experts = [f"{m}experts.{e}.{leaf}" for e in range(cfg.experts_in(i))
               for leaf in ("w1.weight", "w1.bias", "w2.weight", "w2.bias")]
    return [m + "norm.weight", m + "router.weight", *experts]


def build_groups(cfg: Config) -> list[Group]:
    """Every group of the config (blocks a layer no longer has have no groups), and the rows no token reaches."""
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
    if cfg.reachable_rows < cfg.vocab_size:
        groups.append(vocab_group(cfg, "tok_emb.weight"))
    return groups
