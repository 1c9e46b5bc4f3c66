"""The selective-scan architecture's sizes as plain Python: the config dataclass and the parameter count by arithmetic.

Torch-free: the workflow's parse checks configs and plans pruning with these alone. The model is in model.py; its
glossary of dimension letters applies here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...modelconfig import LayerSizes

# (pattern on a state-dict name, component, category of analysis.CATEGORIES): the report's parameter breakdown; the
# first match wins.
COMPONENTS = [
    (r"^tok_emb\.", "token embedding (tied LM head)", "embeddings"),
    (r"^pos_emb\.", "position embedding", "position embeddings"),
    (r"ssm\.in_proj\.", "ssm.in_proj", "SSM blocks"),
    (r"ssm\.conv1d\.", "ssm.conv1d", "SSM blocks"),
    (r"ssm\.(A_log|B|C|D)$", "ssm.state (A_log, B, C, D)", "SSM blocks"),
    (r"ssm\.delta_proj\.", "ssm.delta_proj", "SSM blocks"),
    (r"ssm\.out_proj\.", "ssm.out_proj", "SSM blocks"),
    (r"ssm\.(norm|inner_norm)\.", "ssm.norms", "norms"),
    (r"moe\.router\.", "moe.router", "MoE and feed-forward blocks"),
    (r"moe\.experts\.", "moe.experts", "MoE and feed-forward blocks"),
    (r"moe\.norm\.", "moe.norm", "norms"),
    (r"^norm_f\.", "final norm", "norms"),
]


@dataclass
class Config(LayerSizes):
    architecture: ClassVar[str] = "selective_scan"

    vocab_size: int = 8000
    d_model: int = 128
    n_layers: int = 4
    max_seq: int = 128
    d_inner: int = 256  # default SSM channels per layer
    d_state: int = 8
    d_conv: int = 4
    n_experts: int = 4  # default experts per layer
    expert_hidden: int = 64  # default hidden size per expert
    top_k: int = 2
    # Per-layer sizes; derived from the defaults above when empty, edited by pruning (0 channels or no experts: the
    # layer has no such block).
    # Rows of the table a token id can reach: the tokenizer's ids (0: every row). An imported word-level tokenizer
    # may reach 184 of 2,000 rows; pruning removes the others (group kind "vocab").
    vocab_reachable: int = 0
    layer_d_inner: list[int] = field(default_factory=list)
    layer_expert_hidden: list[list[int]] = field(default_factory=list)
    # Widths the RMSNorms divide by (the unpruned widths); derived when 0.
    norm_ref_d_model: int = 0
    norm_ref_d_inner: int = 0

    def __post_init__(self):
        if not self.layer_d_inner:
            self.layer_d_inner = [self.d_inner] * self.n_layers
        if not self.layer_expert_hidden:
            self.layer_expert_hidden = [[self.expert_hidden] * self.n_experts for _ in range(self.n_layers)]
        self.norm_ref_d_model = self.norm_ref_d_model or self.d_model
        self.norm_ref_d_inner = self.norm_ref_d_inner or self.d_inner
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when a size is impossible."""
        positive = ("vocab_size", "d_model", "n_layers", "max_seq", "d_state", "d_conv", "top_k")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.vocab_reachable <= self.vocab_size:
            raise ValueError(f"model: {self.vocab_reachable} reachable rows in a table of {self.vocab_size}")
        if len(self.layer_d_inner) != self.n_layers or len(self.layer_expert_hidden) != self.n_layers:
            raise ValueError(f"model: per-layer sizes must list {self.n_layers} layers")
        if any(di < 0 for di in self.layer_d_inner):
            raise ValueError(f"model.d_inner must be >= 0 in every layer (0: no SSM block), got {self.layer_d_inner}")
        for hidden in self.layer_expert_hidden:
            if any(h < 1 for h in hidden):
                raise ValueError(f"model.expert_hidden: every expert needs a size >= 1, got {hidden}")

    def is_routed(self, layer: int) -> bool:
        """Whether the layer's second block routes among experts (always, where it has one)."""
        return self.has_moe(layer)

    def scan_state_shape(self, layer: int) -> list[int]:
        return [self.layer_d_inner[layer], self.d_state]  # a state per channel


def parameter_count(cfg: Config) -> int:
    """Parameter count of a config, by arithmetic (the planner calls it thousands of times)."""
    d, n, k = cfg.d_model, cfg.d_state, cfg.d_conv
    total = cfg.vocab_size * d + cfg.max_seq * d + d  # tied table, positions, final norm
    for di, hidden in zip(cfg.layer_d_inner, cfg.layer_expert_hidden):
        if di:
            total += d + 2 * di * d + di * k + di + di * di + di + n + 2 * n * di + di + di + di * d  # SSM block
        if hidden:
            total += d + len(hidden) * d + sum(2 * d * h + h + d for h in hidden)  # MoE block
    return total
