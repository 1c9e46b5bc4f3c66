"""The two architectures behind one interface: configs, parameter counts, pruning groups and models by name.

- "project": the default study's IteraLite (model.py, modelconfig.py, pruning/groups.py, onnxgraph.py), a
  Mamba-style selective SSM with RMSNorms.
- "reference": the Itera-Lite repository's IteraLiteModel (iteralite/reference/).

Every stage sees a model through what both provide: `cfg` (sizes, `has_ssm`/`has_moe`/`experts_in` per layer,
`to_dict` that rebuilds it: `modelconfig.LayerSizes`), `forward(ids) -> (logits, balance)`, `hidden_states`, `head`,
`token_embedding`, `empty_cache`/`step` (the recurrent mode, `model.RecurrentMode`) and `generate`;
`layers[i]["ssm"]` and `layers[i]["moe"]` are a layer's two blocks, and `routed_blocks()` the blocks that route
among experts. Each declares its pruning groups (`iteralite.pruning.groups.build_groups`). Torch-free at import:
the workflow's parse uses the configs, counts and groups; `build_model` imports the model code.
"""

from __future__ import annotations

from .modelconfig import IteraLiteConfig
from .modelconfig import parameter_count as project_parameter_count
from .reference.config import ReferenceConfig
from .reference.config import parameter_count as reference_parameter_count

CONFIGS = {"project": IteraLiteConfig, "reference": ReferenceConfig}
ModelConfig = IteraLiteConfig | ReferenceConfig


def architecture_of(values: dict) -> str:
    """The architecture a config dict names (a config without the key is the project's: its older files)."""
    name = values.get("architecture", "project")
    if name not in CONFIGS:
        raise ValueError(f"model.architecture must be one of {sorted(CONFIGS)}, got {name!r}")
    return name


def config_from_dict(values: dict) -> ModelConfig:
    """The config a dict describes (a checkpoint's, or the study's model section with the vocabulary size)."""
    return CONFIGS[architecture_of(values)].from_dict(values)


def parameter_count(cfg: ModelConfig) -> int:
    count = reference_parameter_count if cfg.architecture == "reference" else project_parameter_count
    return count(cfg)


def build_model(cfg: ModelConfig):
    """A fresh model of the config's architecture (on the current default device)."""
    if cfg.architecture == "reference":
        from .reference.model import ReferenceIteraLite as model_class
    else:
        from .model import IteraLite as model_class
    return model_class(cfg)


def differences(found: ModelConfig, expected: ModelConfig) -> dict[str, tuple]:
    """key -> (found, expected) for every size in which a checkpoint's model differs from the study's."""
    actual = found.to_dict()
    return {key: (actual.get(key), value) for key, value in expected.to_dict().items() if actual.get(key) != value}
