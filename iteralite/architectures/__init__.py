"""The registry of architectures: the only code that names them (after timm's registry).

Each architecture is one folder here, a package of modules ("facets") with the same names and the same interface:

- config.py: `Config`, its sizes as a `modelconfig.LayerSizes` dataclass, and `parameter_count(cfg)` by arithmetic.
  Torch-free: the workflow's parse checks configs and plans pruning with these alone;
- model.py: `Model(cfg)`, a torch module with `forward(ids) -> (logits, balance)`, `hidden_states`, `head`,
  `token_embedding`, the recurrent mode (`layers.RecurrentMode`: `empty_cache`, `step`, `generate`), `layers[i]["ssm"]`
  and `layers[i]["moe"]` (a layer's two blocks) and `routed_blocks()`; and `training_paths(device_type)`, the
  variants of its training step that `make bench-train` times (the first is the one training takes);
- groups.py: `build_groups(cfg)`, its coupled pruning groups (`pruning.groups.Group`), torch-free;
- onnx.py: `Builder`, an `onnxgraph.GraphBuilder` with its blocks (`ssm_block`, `moe_block`, `final_norm`);
- optionally more: itera_lite's convert.py and tokenizer.py import the files of the Itera-Lite code.

The shared code reaches a facet through `facet(architecture, "<module>")` with the module's name written out, so
that the code tracking (iteralite.provenance) sees which facets a rule's code reaches, as it sees an import; the
two doors most code needs sit beside this module, each reaching one facet: configs.py (a config from a dict, its
parameter count) and models.py (a model of a config). This module itself reaches none, so that a rule that only
needs a name (the tokenizer import) does not rerun when a model's code changes.
"""

from __future__ import annotations

import importlib

from ..modelconfig import LayerSizes

# One line per architecture: its folder. The first is the default study's model.
ARCHITECTURES = (
    "itera_lite",  # the Itera-Lite repository's IteraLiteModel: the model the study plan is written for
    "selective_scan",  # a Mamba-style selective scan: a step size and a state per channel, RMSNorms
)
# Names a study config or a checkpoint may still carry, and what they are called now.
FORMER_NAMES = {"reference": "itera_lite", "project": "selective_scan"}
# Checkpoints written before configs named their architecture hold this one.
UNNAMED = "selective_scan"
# The architecture a checkpoint of the Itera-Lite code imports as (its folder has convert.py and tokenizer.py).
ITERA_LITE_FILES = "itera_lite"

ModelConfig = LayerSizes


def facet(architecture: str, module: str):
    """The module `module` (config, model, groups, onnx, ...) of an architecture."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    return importlib.import_module(f"{__name__}.{architecture}.{module}")


def study_architecture(model_section: dict) -> str:
    """The architecture a study's model section names (the default's when it names none); a former name is refused
    in one line naming the new one."""
    name = model_section.get("architecture", ARCHITECTURES[0])
    if name in FORMER_NAMES:
        raise ValueError(f"model.architecture: {name!r} is now called {FORMER_NAMES[name]!r}; write "
                         f"'architecture: {FORMER_NAMES[name]}'")
    if name not in ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {list(ARCHITECTURES)}, got {name!r}")
    return name


def saved_architecture(values: dict) -> str:
    """The architecture of a config dict a file holds: by name, by a former name, or unnamed (older files)."""
    name = values.get("architecture", UNNAMED)
    name = FORMER_NAMES.get(name, name)
    if name not in ARCHITECTURES:
        raise ValueError(f"model config names an unknown architecture {name!r} (known: {list(ARCHITECTURES)})")
    return name
