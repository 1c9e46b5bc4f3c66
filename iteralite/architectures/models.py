"""The registry's door to the architectures' models (their model.py)."""

from __future__ import annotations

from . import ModelConfig, facet


def model_class(cfg: ModelConfig) -> type:
    return facet(cfg.architecture, "model").Model


def build_model(cfg: ModelConfig):
    """A fresh model of the config's architecture (on the current default device)."""
    return model_class(cfg)(cfg)
