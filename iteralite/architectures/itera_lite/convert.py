"""Import a checkpoint the Itera-Lite code wrote as the Itera-Lite architecture (transformers' convert_* scripts'
role): recognise its layout, map its keys, infer every size from the tensors, check them against each other and
against the file's config, and rebuild the model. Loading stays weights-only (artifacts.load_torch).

Accepted (../docs/import.md lists them with what each holds):
- a dict with `model_state_dict` (and maybe `config` with the Itera-Lite keys), or a bare state dict;
- both MoE key layouts, `.moe.layer.` (the Itera-Lite code's) and `.moe.moe.` (files converted by other code);
- float16 tensors (to float32), tensors saved on a CUDA device (mapped to the CPU by the loader);
- dynamically quantized int8 Linears (`<m>._packed_params._packed_params` = (qint8 weight, bias), with `<m>.scale`,
  `<m>.zero_point`, `<m>._packed_params.dtype`), dequantized; `lm_head`, stored then as its own int8 copy of the
  table, is dropped for the float table it was quantized from (the head is tied);
- a router with 0 experts: that layer has no second block (a warning names it).
`top_k` cannot be inferred: the file's config gives it, else the study's `model.top_k`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import torch

from ...artifacts import CheckpointError, load_torch
from ...checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .config import Config
from .model import Model

log = logging.getLogger(__name__)

PACKED = "._packed_params._packed_params"
QUANTIZATION_LEAVES = (".scale", ".zero_point", "._packed_params.dtype")
STATISTICS = (".router.expert_counts",)  # buffers the forward never reads
# Itera-Lite config key -> what it must equal in the sizes read from the tensors
CONFIG_CHECKS = {"vocab_size": "vocab_size", "hidden_size": "d_model", "num_layers": "n_layers",
                 "ssm_state_size": "d_state", "ssm_conv_kernel": "d_conv", "max_seq_length": "max_seq"}


def read_user_checkpoint(path, top_k: int | None) -> tuple:
    """A user's baseline (`model.checkpoint`): this package's checkpoint, or one the Itera-Lite code wrote, imported
    as the Itera-Lite architecture (`top_k` where its file does not say). Returns (model, what the file held)."""
    blob = load_torch(path, "model.checkpoint")
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        model, meta = load_checkpoint(path, blob=blob)
        return model, {"format": CHECKPOINT_FORMAT, **meta}
    model, report = import_checkpoint(blob, path, top_k)
    return model, {"format": "Itera-Lite", **report}


def looks_like_itera_lite(blob) -> bool:
    """Whether a loaded file has the shape of an Itera-Lite checkpoint (not whether its tensors fit)."""
    state = blob.get("model_state_dict") if isinstance(blob, dict) else None
    state = blob if state is None else state
    return isinstance(state, dict) and "embedding.weight" in state


def import_checkpoint(blob, path, study_top_k: int | None) -> tuple[Model, dict]:
    """(the model, what was found and inferred) of a loaded Itera-Lite file; CheckpointError names the file and
    the tensor or key at fault."""
    if not looks_like_itera_lite(blob):
        raise CheckpointError(f"model.checkpoint {path} is neither an IteraLite checkpoint (format "
                              "iteralite-checkpoint-v1) nor an Itera-Lite one (a dict with model_state_dict, or a "
                              "state dict, holding embedding.weight)")
    wrapped = "model_state_dict" in blob
    file_config = blob.get("config") if wrapped else None
    if file_config is not None and not isinstance(file_config, dict):
        raise CheckpointError(f"model.checkpoint {path}: its config is a {type(file_config).__name__}, not a dict")
    layout = ["dict with model_state_dict" + (" and config" if file_config else "") if wrapped else "bare state dict"]
    state, found = _plain_tensors(blob["model_state_dict"] if wrapped else blob, path)
    layout += found
    cfg, inferred, warnings = _infer_config(state, file_config or {}, study_top_k, path)
    with torch.device("meta"):
        model = Model(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise CheckpointError(f"model.checkpoint {path}: its tensors contradict each other: {detail}") from None
    report = {"layout": layout, "inferred": inferred, "warnings": warnings,
              "config_keys": sorted(file_config) if file_config else []}
    return model.eval(), report


def _plain_tensors(raw: dict, path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """float32 tensors under this package's names; what was found on the way."""
    found, state = set(), {}
    packed_modules = {k[: -len(PACKED)] for k in raw if k.endswith(PACKED)}
    for key, value in raw.items():
        name = key.replace(".moe.moe.", ".moe.layer.")
        if name != key:
            found.add("MoE keys .moe.moe. (read as .moe.layer.)")
        if key.endswith(PACKED):
            weight, bias = _unpacked(value, key, path)
            state[name[: -len(PACKED)] + ".weight"] = weight
            if bias is not None:
                state[name[: -len(PACKED)] + ".bias"] = bias
            found.add("int8 dynamically quantized Linears (dequantized)")
            continue
        if any(key.endswith(leaf) and key[: -len(leaf)] in packed_modules for leaf in QUANTIZATION_LEAVES) \
                or key.endswith(STATISTICS):
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise CheckpointError(f"model.checkpoint {path}: {key} is a {type(value).__name__}"
                                  f"{' of ' + str(value.dtype) if isinstance(value, torch.Tensor) else ''}, "
                                  "not a floating-point tensor")
        if value.dtype != torch.float32:
            found.add(f"{str(value.dtype).removeprefix('torch.')} tensors (to float32)")
        state[name] = value.float()
    head = state.pop("lm_head.weight", None)
    if head is not None and "embedding.weight" in state:
        diff = (head - state["embedding.weight"]).abs().max().item() if head.shape == state["embedding.weight"].shape \
            else float("inf")
        if diff > 0:
            found.add(f"lm_head stored apart from the table (max difference {diff:.3g}); the head reads the table")
    return state, sorted(found)


def _unpacked(value, key: str, path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], torch.Tensor)):
        raise CheckpointError(f"model.checkpoint {path}: {key} is not a (weight, bias) pair of a quantized Linear")
    weight, bias = value
    weight = weight.dequantize() if weight.is_quantized else weight
    return weight.float(), None if bias is None else bias.float()


def _layers(state: dict) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if not indices or sorted(indices) != list(range(max(indices) + 1)):
        raise CheckpointError(f"the layers are numbered {sorted(indices)}, not 0..n-1")
    return max(indices) + 1


def _shape(state: dict, name: str, path) -> tuple[int, ...]:
    if name not in state:
        raise CheckpointError(f"model.checkpoint {path} lacks {name}")
    return tuple(state[name].shape)


def _infer_config(state: dict, file_config: dict, study_top_k: int | None, path):
    """The Config the tensors describe; where each size came from; warnings."""
    try:
        n_layers = _layers(state)
    except CheckpointError as err:
        raise CheckpointError(f"model.checkpoint {path}: {err}") from None
    vocab, d = _shape(state, "embedding.weight", path)
    max_seq = _shape(state, "position_embedding.weight", path)[0]
    d_state = _shape(state, "layers.0.ssm.ssm.A_log", path)[0]
    d_conv = _shape(state, "layers.0.ssm.conv1d.weight", path)[-1]
    layer_d_inner, layer_hidden, moe_layers, warnings = [], [], [], []
    for i in range(n_layers):
        layer_d_inner.append(_shape(state, f"layers.{i}.ssm.in_proj.weight", path)[0] // 2)
        router = f"layers.{i}.moe.layer.router.gate.weight"
        if router in state:
            moe_layers.append(i)
            experts = _shape(state, router, path)[0]
            if experts == 0:
                warnings.append(f"layer {i}: its router has 0 experts; the layer has no MoE block")
                for key in [k for k in state if k.startswith(f"layers.{i}.moe.")]:
                    del state[key]
            layer_hidden.append([_shape(state, f"layers.{i}.moe.layer.experts.{e}.w1.weight", path)[0]
                                 for e in range(experts)])
        else:
            layer_hidden.append([_shape(state, f"layers.{i}.moe.ffn.w1.weight", path)[0]])
    routed = [len(layer_hidden[i]) for i in moe_layers if layer_hidden[i]]
    hidden = [h for sizes in layer_hidden for h in sizes]
    if "top_k_experts" in file_config:
        top_k, top_k_source = file_config["top_k_experts"], "the file's config (top_k_experts)"
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise CheckpointError(f"model.checkpoint {path}: its config's top_k_experts is {top_k!r}, not a "
                                  "positive integer")
    else:
        top_k, top_k_source = study_top_k, "the study's model.top_k (the file has no config)"
    for i in moe_layers:
        if layer_hidden[i] and top_k > len(layer_hidden[i]):
            raise CheckpointError(f"model.checkpoint {path}: top_k={top_k} ({top_k_source}) exceeds the "
                                  f"{len(layer_hidden[i])} experts of layer {i}")
    sizes = {"vocab_size": vocab, "d_model": d, "n_layers": n_layers, "max_seq": max_seq, "d_state": d_state,
             "d_conv": d_conv}
    for key, ours in CONFIG_CHECKS.items():
        if key in file_config and file_config[key] != sizes[ours]:
            raise CheckpointError(f"model.checkpoint {path}: its config says {key}={file_config[key]}, its tensors "
                                  f"give {sizes[ours]}")
    expand = file_config.get("ssm_expand_factor")
    if expand is not None and any(di != d * expand for di in layer_d_inner):
        raise CheckpointError(f"model.checkpoint {path}: its config says ssm_expand_factor={expand}, its in_proj "
                              f"tensors give d_inner {layer_d_inner} for hidden size {d}")
    if "moe_layers" in file_config and sorted(file_config["moe_layers"]) != moe_layers:
        raise CheckpointError(f"model.checkpoint {path}: its config says moe_layers={file_config['moe_layers']}, "
                              f"its tensors have routers in layers {moe_layers}")
    try:
        cfg = Config(
            **sizes, d_inner=Counter(layer_d_inner).most_common(1)[0][0],
            n_experts=max(routed, default=max(top_k or 1, 1)),
            expert_hidden=Counter(hidden).most_common(1)[0][0] if hidden else 1,  # every layer lost its block
            top_k=top_k, moe_layers=moe_layers, norm_eps=float(file_config.get("layer_norm_eps", 1e-5)),
            layer_d_inner=layer_d_inner, layer_expert_hidden=layer_hidden)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"model.checkpoint {path}: {err}") from None
    inferred = {"from the tensors": sizes | {"d_inner per layer": layer_d_inner, "moe_layers": moe_layers,
                                             "expert sizes per layer": layer_hidden},
                "top_k": f"{top_k} from {top_k_source}",
                "norm_eps": f"{cfg.norm_eps:g} from " + ("the file's config" if "layer_norm_eps" in file_config
                                                         else "Itera-Lite's default")}
    return cfg, inferred, warnings
