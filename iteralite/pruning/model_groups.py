"""A model config's coupled groups, as its architecture declares them (architectures/<name>/groups.py)."""

from __future__ import annotations

from ..architectures import ModelConfig, facet
from .groups import Group


def build_groups(cfg: ModelConfig) -> list[Group]:
    """Every prunable group of a model config (blocks a layer no longer has have no groups), and the table's rows
    no token reaches, where there are such rows."""
    return facet(cfg.architecture, "groups").build_groups(cfg)
