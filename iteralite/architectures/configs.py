"""The registry's door to the architectures' configs (their config.py): torch-free, what the workflow's parse uses."""

from __future__ import annotations

from . import ModelConfig, facet, saved_architecture


def config_class(architecture: str) -> type[ModelConfig]:
    return facet(architecture, "config").Config


def config_from_dict(values: dict) -> ModelConfig:
    """The config a saved dict describes (a checkpoint's, an export's)."""
    return config_class(saved_architecture(values)).from_dict(values)


def parameter_count(cfg: ModelConfig) -> int:
    return facet(cfg.architecture, "config").parameter_count(cfg)


def differences(found: ModelConfig, expected: ModelConfig) -> dict[str, tuple]:
    """key -> (found, expected) for every size in which a checkpoint's model differs from the study's."""
    actual = found.to_dict()
    return {key: (actual.get(key), value) for key, value in expected.to_dict().items() if actual.get(key) != value}
