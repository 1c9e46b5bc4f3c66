"""The Itera-Lite architecture's sizes as plain Python: the config dataclass and the parameter count by arithmetic.

Torch-free: the workflow's parse checks configs and plans pruning with these alone. Names follow the package's
(d_model, d_inner, ...); the Itera-Lite config's names map onto them as
hidden_size -> d_model, num_layers -> n_layers, ssm_state_size -> d_state, ssm_conv_kernel -> d_conv,
hidden_size * ssm_expand_factor -> d_inner, num_experts -> n_experts, expert_size -> expert_hidden,
top_k_experts -> top_k, max_seq_length -> max_seq, layer_norm_eps -> norm_eps (the final norm's; the blocks' norms
use torch's default 1e-5, as that code does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...modelconfig import LayerSizes

# (pattern on a state-dict name, component, category of analysis.CATEGORIES): the report's parameter breakdown; the
# first match wins.
COMPONENTS = [
    (r"^embedding\.", "token embedding (tied LM head)", "embeddings"),
    (r"^position_embedding\.", "position embedding", "position embeddings"),
    (r"ssm\.in_proj\.", "ssm.in_proj", "SSM blocks"),
    (r"ssm\.conv1d\.", "ssm.conv1d", "SSM blocks"),
    (r"ssm\.ssm\.(A_log|B|C|D)$", "ssm.state (A_log, B, C, D)", "SSM blocks"),
    (r"ssm\.ssm\.delta_proj\.", "ssm.delta_proj", "SSM blocks"),
    (r"ssm\.out_proj\.", "ssm.out_proj", "SSM blocks"),
    (r"ssm\.norm\.", "ssm.norms", "norms"),
    (r"moe\.layer\.router\.", "moe.router", "MoE and feed-forward blocks"),
    (r"moe\.layer\.experts\.", "moe.experts", "MoE and feed-forward blocks"),
    (r"moe\.ffn\.", "feed-forward (moe.ffn)", "MoE and feed-forward blocks"),
    (r"moe\.(layer\.)?norm\.", "moe.norm", "norms"),
    (r"^norm\.", "final norm", "norms"),
]


@dataclass
class Config(LayerSizes):
    architecture: ClassVar[str] = "itera_lite"

    vocab_size: int = 8000
    d_model: int = 128
    n_layers: int = 4
    max_seq: int = 128
    d_inner: int = 256  # hidden_size * ssm_expand_factor (2)
    d_state: int = 8
    d_conv: int = 4
    n_experts: int = 4
    expert_hidden: int = 64
    top_k: int = 2
    moe_layers: list[int] | None = None  # None: every other layer from 1, as the Itera-Lite config does
    norm_eps: float = 1e-5
    # Per-layer sizes, derived when empty and edited by pruning. An MoE layer lists its experts' hidden sizes, a
    # feed-forward layer one size (its single expert); 0 channels or an empty list: the layer has no such block.
    # Rows of the table a token id can reach: the tokenizer's ids (0: every row). An imported word-level tokenizer
    # may reach 184 of 2,000 rows; pruning removes the others (group kind "vocab").
    vocab_reachable: int = 0
    layer_d_inner: list[int] = field(default_factory=list)
    layer_expert_hidden: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        if self.moe_layers is None:
            self.moe_layers = list(range(1, self.n_layers, 2))
        self.validate_sizes()
        if not self.layer_d_inner:
            self.layer_d_inner = [self.d_inner] * self.n_layers
        if not self.layer_expert_hidden:
            self.layer_expert_hidden = [
                [self.expert_hidden] * (self.n_experts if i in self.moe_layers else 1) for i in range(self.n_layers)
            ]
        self.validate()

    def validate_sizes(self) -> None:
        """Raise ValueError naming the key when a size cannot build a model."""
        for name in ("vocab_size", "d_model", "n_layers", "max_seq", "d_inner", "d_state", "d_conv", "n_experts",
                     "expert_hidden", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        outside = [i for i in self.moe_layers if not isinstance(i, int) or not 0 <= i < self.n_layers]
        if outside:
            raise ValueError(f"model.moe_layers: {outside} lie outside the layers 0..{self.n_layers - 1} "
                             f"(model.n_layers={self.n_layers})")
        if len(set(self.moe_layers)) != len(self.moe_layers):
            raise ValueError(f"model.moe_layers lists a layer twice: {self.moe_layers}")
        if self.top_k > self.n_experts:
            raise ValueError(f"model.top_k={self.top_k} exceeds model.n_experts={self.n_experts}")

    def validate(self) -> None:
        if not 0 <= self.vocab_reachable <= self.vocab_size:
            raise ValueError(f"model: {self.vocab_reachable} reachable rows in a table of {self.vocab_size}")
        if len(self.layer_d_inner) != self.n_layers or len(self.layer_expert_hidden) != self.n_layers:
            raise ValueError(f"model: per-layer sizes must list {self.n_layers} layers")
        if any(di < 0 for di in self.layer_d_inner):
            raise ValueError(f"model.d_inner must be >= 0 in every layer (0: no SSM block), got {self.layer_d_inner}")
        for i, hidden in enumerate(self.layer_expert_hidden):
            if any(h < 1 for h in hidden):
                raise ValueError(f"model.expert_hidden: every expert needs a size >= 1, got {hidden}")
            if i not in self.moe_layers and len(hidden) > 1:
                raise ValueError(f"model: layer {i} is a feed-forward layer (not in model.moe_layers) with "
                                 f"{len(hidden)} experts")

    def is_routed(self, layer: int) -> bool:
        """Whether the layer's second block routes among experts (a feed-forward block does not)."""
        return layer in self.moe_layers and self.has_moe(layer)

    def scan_state_shape(self, layer: int) -> list[int]:
        return [self.d_state]  # one state shared by the layer's channels


def parameter_count(cfg: Config) -> int:
    """Parameter count of a config, by arithmetic (the planner calls it thousands of times)."""
    d, n, k = cfg.d_model, cfg.d_state, cfg.d_conv
    total = cfg.vocab_size * d + cfg.max_seq * d + 2 * d  # tied table, positions, final LayerNorm
    for i, (di, hidden) in enumerate(zip(cfg.layer_d_inner, cfg.layer_expert_hidden)):
        if di:  # LayerNorm, in_proj, conv1d, A_log, B, C, D, delta_proj, out_proj
            total += 2 * d + 2 * di * d + di * k + di + n + 2 * n * di + di + di * di + di + di * d
        if hidden:  # LayerNorm, router (MoE layers only), experts without biases
            total += 2 * d + (len(hidden) * d if cfg.is_routed(i) else 0) + sum(2 * d * h for h in hidden)
    return total
