"""What every architecture's config answers alike (each config.py under architectures/ subclasses it).

Torch-free on purpose: Snakemake parses the workflow (config checks, the planner) with the configs alone, and so does
every job that only needs names and sizes. Dimension letters as in the models' glossaries (b batch, di SSM channels of
a layer, n d_state).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar


class LayerSizes:
    """What both architectures' configs answer alike: per-layer blocks and sizes, the table's reachable rows, the dict
    that rebuilds them (naming the architecture). Each config dataclass adds its fields, checks and `is_routed`."""

    architecture: ClassVar[str]
    # The sizes every architecture's config has, which the shared code reads (the planner, the graph builder, the
    # benchmarks); a config adds its own (norm widths, moe_layers, ...).
    vocab_size: int
    d_model: int
    n_layers: int
    max_seq: int
    d_inner: int
    d_state: int
    d_conv: int
    n_experts: int
    expert_hidden: int
    top_k: int
    vocab_reachable: int
    layer_d_inner: list[int]
    layer_expert_hidden: list[list[int]]

    @property
    def reachable_rows(self) -> int:
        return self.vocab_reachable or self.vocab_size

    def has_ssm(self, layer: int) -> bool:
        return self.layer_d_inner[layer] > 0

    def has_moe(self, layer: int) -> bool:
        """Whether the layer has its second block (experts, or a feed-forward block)."""
        return bool(self.layer_expert_hidden[layer])

    def experts_in(self, layer: int) -> int:
        return len(self.layer_expert_hidden[layer])

    def top_k_in(self, layer: int) -> int:
        """top_k never exceeds the experts a layer has left."""
        return min(self.top_k, self.experts_in(layer))

    def scan_state_shape(self, layer: int) -> list[int]:
        """The shape of a layer's scan state after the batch axis (the recurrent cache, the ONNX graphs' state)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict):
        values = {k: v for k, v in values.items() if k != "architecture"}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"model config has unknown keys: {sorted(unknown)}")
        return cls(**values)
