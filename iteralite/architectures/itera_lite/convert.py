"""Import a checkpoint the Itera-Lite code wrote as the Itera-Lite architecture (transformers' convert_* scripts'
role): recognise its layout, map its keys, infer every size from the tensors, check them against each other and
against the file's config, and rebuild the model. Loading stays weights-only (artifacts.load_torch).

Every torch.save of that code writes one of these (../docs/import.md, "Every file the Itera-Lite code writes"):
- a dict with `model_state_dict` (and maybe `config`: a dict of the Itera-Lite keys, a pickled
  `models.config.IteraLiteConfig`, read as its fields by a stand-in class, or a training config without model
  keys, ignored), or a bare state dict; other entries (optimizer state, statistics) are ignored;
- both MoE key layouts, `.moe.layer.` (the Itera-Lite code's) and `.moe.moe.`;
- float16 tensors (to float32), tensors saved on a CUDA device (mapped to the CPU by the loader);
- quantized Linears, dequantized to float32: torch's dynamic int8 (`<m>._packed_params._packed_params` = (qint8
  weight, bias), with `<m>.scale`, `<m>.zero_point`, `<m>._packed_params.dtype`); utils/mixed_precision.py's
  `QuantizedLinear` (`<m>.weight_int8` int8 and `<m>.scale`, one per output row: W = weight_int8 * scale);
  bitsandbytes' 4-bit Linear4bit (`<m>.weight` packed uint8 with `<m>.weight.absmax`, `.quant_map` and the
  quant state's JSON, maybe double-quantized absmax). A quantized `lm_head` is dropped for the float table it
  was quantized from (the head is tied);
- a router with 0 experts: that layer has no second block (a warning says how such a file comes about).
`top_k` cannot be inferred: the file's config gives it, else the study's `model.top_k`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter

import numpy as np
import torch

from ...artifacts import CheckpointError, load_torch
from ...checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .config import Config
from .model import Model

log = logging.getLogger(__name__)

PACKED = "._packed_params._packed_params"
QUANTIZATION_LEAVES = (".scale", ".zero_point", "._packed_params.dtype")
INT8_WEIGHT, ROW_SCALE = ".weight_int8", ".scale"  # utils/mixed_precision.py's QuantizedLinear
FOUR_BIT_STATE = ".weight.quant_state.bitsandbytes__"  # + nf4 or fp4: the quant state's JSON, as uint8 bytes
FOUR_BIT_LEAVES = (".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map")
MAX_QUANT_STATE_BYTES = 1 << 12
STATISTICS = (".router.expert_counts",)  # buffers the forward never reads
# Itera-Lite config key -> what it must equal in the sizes read from the tensors
CONFIG_CHECKS = {"vocab_size": "vocab_size", "hidden_size": "d_model", "num_layers": "n_layers",
                 "ssm_state_size": "d_state", "ssm_conv_kernel": "d_conv", "max_seq_length": "max_seq"}
MODEL_KEYS = {*CONFIG_CHECKS, "ssm_expand_factor", "num_experts", "expert_size", "top_k_experts", "moe_layers",
              "layer_norm_eps"}


class SavedConfig:
    """utils/advanced_quantization.py pickles the model's `models.config.IteraLiteConfig` as its file's `config`.
    The weights-only loader builds this stand-in under that one qualified name and hands it the instance's
    fields; nothing of the file runs, and the fields are checked like a dict config."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError("a pickled IteraLiteConfig whose state is not a dict of fields")
        self.fields = state


# What a weights-only load may build beyond tensors and containers: the pickled config above, and numpy scalars
# (utils/mixed_precision.py's metadata holds numpy.float64 perplexities), under numpy 2's and numpy 1's names.
SAFE_GLOBALS = [(SavedConfig, "models.config.IteraLiteConfig"), np._core.multiarray.scalar,
                (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype,
                *(type(np.dtype(kind)) for kind in (np.float64, np.float32, np.int64))]


def read_user_checkpoint(path, top_k: int | None) -> tuple:
    """A user's baseline (`model.checkpoint`): this package's checkpoint, or one the Itera-Lite code wrote, imported
    as the Itera-Lite architecture (`top_k` where its file does not say). Returns (model, what the file held)."""
    blob = load_torch(path, "model.checkpoint", SAFE_GLOBALS)
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
    file_config, config_found = _model_config(blob.get("config") if wrapped else None, path)
    layout = ["dict with model_state_dict" + config_found if wrapped else "bare state dict"]
    state, found, warnings = _plain_tensors(blob["model_state_dict"] if wrapped else blob, path)
    layout += found
    cfg, inferred, size_warnings = _infer_config(state, file_config, study_top_k, path)
    with torch.device("meta"):
        model = Model(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise CheckpointError(f"model.checkpoint {path}: its tensors contradict each other: {detail}") from None
    report = {"layout": layout, "inferred": inferred, "warnings": size_warnings + warnings + _untrained_norms(model),
              "config_keys": sorted(file_config)}
    return model.eval(), report


def with_window(model: Model, max_seq: int) -> Model:
    """The model on windows of at most `max_seq` positions: its first `max_seq` learned positions, so every
    shorter window computes exactly what it did."""
    if max_seq < model.cfg.max_seq:
        model.position_embedding.weight = torch.nn.Parameter(model.position_embedding.weight[:max_seq].clone())
        model.position_embedding.num_embeddings = max_seq
        model.cfg.max_seq = max_seq
    return model


def _model_config(config, path) -> tuple[dict, str]:
    """The file's model config as a dict of the Itera-Lite keys (empty when it has none), and how it was found."""
    if config is None:
        return {}, ""
    if isinstance(config, SavedConfig):
        config, found = config.fields, " and config (a pickled IteraLiteConfig, read as its fields)"
    elif isinstance(config, dict):
        found = " and config"
    else:
        raise CheckpointError(f"model.checkpoint {path}: its config is a {type(config).__name__}, not a dict")
    if not MODEL_KEYS & set(config):
        return {}, " and a config without model keys (a training config: ignored)"
    for key in MODEL_KEYS & set(config):
        value = config[key]
        if key == "moe_layers":
            ok = value is None or (isinstance(value, (list, tuple)) and all(_is_int(i) for i in value))
        elif key == "layer_norm_eps":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
        else:
            ok = _is_int(value)
        if not ok:
            raise CheckpointError(f"model.checkpoint {path}: its config's {key} is {value!r}, not "
                                  + ("a list of layer numbers" if key == "moe_layers" else
                                     "a number in (0, 1)" if key == "layer_norm_eps" else "an integer"))
    return {k: v for k, v in config.items() if k in MODEL_KEYS and v is not None}, found


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_tensors(raw: dict, path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """finite float32 tensors under this package's names; what was found on the way; warnings."""
    found, state, quantized = set(), {}, set()
    skipped = _quantization_leaves(raw)
    for key, value in raw.items():
        name = key.replace(".moe.moe.", ".moe.layer.")
        if name != key:
            found.add("MoE keys .moe.moe. (read as .moe.layer.)")
        if key in skipped or key.endswith(STATISTICS):
            continue
        if key.endswith(PACKED):
            module = name[: -len(PACKED)]
            state[module + ".weight"], bias = _unpacked(value, key, path)
            if bias is not None:
                state[module + ".bias"] = bias
            found.add("int8 dynamically quantized Linears (dequantized)")
        elif key.endswith(INT8_WEIGHT):
            module = name[: -len(INT8_WEIGHT)]
            state[module + ".weight"] = _row_scaled(value, raw.get(key[: -len(INT8_WEIGHT)] + ROW_SCALE), key, path)
            found.add("int8 QuantizedLinear weights with a scale per row (dequantized)")
        elif key + ".quant_state.bitsandbytes__nf4" in raw or key + ".quant_state.bitsandbytes__fp4" in raw:
            module = name[: -len(".weight")]
            state[module + ".weight"], kind = _four_bit(raw, key, path)
            found.add(f"bitsandbytes {kind} 4-bit Linears (dequantized)")
        else:
            state[name] = _float(value, key, path)
            if value.dtype != torch.float32:
                found.add(f"{str(value.dtype).removeprefix('torch.')} tensors (to float32)")
            continue
        quantized.add(module)
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"model.checkpoint {path}: {key} holds NaN or infinite values")
    head = state.pop("lm_head.weight", None)
    warnings = []
    if head is not None and "embedding.weight" in state:
        table = state["embedding.weight"]
        diff = (head - table).abs().max().item() if head.shape == table.shape else float("inf")
        if diff > 0 and "lm_head" in quantized:
            found.add(f"lm_head a quantized copy of the table (max difference {diff:.3g}); the head reads the table")
        elif diff > 0:
            warnings.append(f"lm_head.weight differs from embedding.weight (max difference {diff:.3g}): the "
                            "Itera-Lite model ties them, so the import's head reads the table and the file's head "
                            "is dropped")
    return state, sorted(found), warnings


def _quantization_leaves(raw: dict) -> set[str]:
    """Keys read along with a quantized weight, never as parameters of their own."""
    leaves = set()
    for key in raw:
        if key.endswith(PACKED):
            leaves |= {key[: -len(PACKED)] + leaf for leaf in QUANTIZATION_LEAVES}
        elif key.endswith(INT8_WEIGHT):
            leaves.add(key[: -len(INT8_WEIGHT)] + ROW_SCALE)
        elif FOUR_BIT_STATE in key:
            module = key[: key.index(FOUR_BIT_STATE)]
            leaves |= {key, *(module + leaf for leaf in FOUR_BIT_LEAVES)}
    return leaves & set(raw)


def _float(value, key: str, path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise CheckpointError(f"model.checkpoint {path}: {key} is a {type(value).__name__}"
                              f"{' of ' + str(value.dtype) if isinstance(value, torch.Tensor) else ''}, "
                              "not a floating-point tensor")
    return value.float()


def _unpacked(value, key: str, path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], torch.Tensor)):
        raise CheckpointError(f"model.checkpoint {path}: {key} is not a (weight, bias) pair of a quantized Linear")
    weight, bias = value
    weight = weight.dequantize() if weight.is_quantized else weight
    return weight.float(), None if bias is None else _float(bias, key + " (bias)", path)


def _row_scaled(weight, scale, key: str, path) -> torch.Tensor:
    """QuantizedLinear's weight: int8 rows times their scale (its forward's own dequantization)."""
    if not (isinstance(weight, torch.Tensor) and weight.dtype == torch.int8 and weight.dim() == 2):
        raise CheckpointError(f"model.checkpoint {path}: {key} is not a 2-D int8 tensor")
    if not isinstance(scale, torch.Tensor) or scale.numel() != weight.shape[0]:
        raise CheckpointError(f"model.checkpoint {path}: {key} needs a scale of {weight.shape[0]} values (one per "
                              f"row) beside it, {key[: -len(INT8_WEIGHT)] + ROW_SCALE}")
    return weight.float() * _float(scale, key[: -len(INT8_WEIGHT)] + ROW_SCALE, path).reshape(-1, 1)


def _four_bit(raw: dict, key: str, path) -> tuple[torch.Tensor, str]:
    """A bitsandbytes Linear4bit weight, dequantized as bitsandbytes does: element k (two per byte, the first in
    the high nibble) is quant_map[code] * absmax[k // blocksize]; a double-quantized absmax is itself
    nested_quant_map[byte] * nested_absmax[block] + nested_offset. Every size is checked against the stored
    tensors before anything is allocated."""
    kind = "nf4" if key + ".quant_state.bitsandbytes__nf4" in raw else "fp4"
    state_bytes = raw[f"{key}.quant_state.bitsandbytes__{kind}"]

    def fail(what: str):
        return CheckpointError(f"model.checkpoint {path}: {key}, a bitsandbytes {kind} weight: {what}")

    if not (isinstance(state_bytes, torch.Tensor) and state_bytes.dtype == torch.uint8
            and state_bytes.numel() <= MAX_QUANT_STATE_BYTES):
        raise fail(f"its quant state is not a JSON of at most {MAX_QUANT_STATE_BYTES} bytes")
    try:
        quant_state = json.loads(bytes(state_bytes.tolist()).decode("utf-8"))
        shape, blocksize = [int(n) for n in quant_state["shape"]], int(quant_state["blocksize"])
    except (ValueError, KeyError, TypeError):
        raise fail("its quant state is not JSON with shape and blocksize") from None
    tensors = {leaf: raw.get(key + leaf) for leaf in (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")}
    packed, absmax, quant_map = raw[key], tensors[".absmax"], tensors[".quant_map"]
    n = math.prod(shape)
    if len(shape) != 2 or blocksize < 1 or not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 \
            or packed.numel() != (n + 1) // 2:
        raise fail(f"{tuple(packed.shape) if isinstance(packed, torch.Tensor) else packed!r} packed bytes do not "
                   f"hold shape {shape}")
    if not (isinstance(quant_map, torch.Tensor) and quant_map.numel() == 16):
        raise fail("its quant_map is not 16 values")
    if not (isinstance(absmax, torch.Tensor) and absmax.numel() == -(-n // blocksize)):
        raise fail(f"its absmax is not one value per block of {blocksize}")
    if absmax.dtype == torch.uint8:
        nested_absmax, nested_map = tensors[".nested_absmax"], tensors[".nested_quant_map"]
        nested_block = int(quant_state.get("nested_blocksize", 0) or 0)
        if not (nested_block >= 1 and isinstance(nested_map, torch.Tensor) and nested_map.numel() == 256
                and isinstance(nested_absmax, torch.Tensor)
                and nested_absmax.numel() == -(-absmax.numel() // nested_block)):
            raise fail("its double-quantized absmax lacks a nested_quant_map of 256 values or a nested_absmax per "
                       "nested block")
        scales = nested_absmax.float().repeat_interleave(nested_block)[: absmax.numel()]
        absmax = nested_map.float()[absmax.long()] * scales + float(quant_state.get("nested_offset", 0.0))
    codes = torch.stack([packed.flatten() >> 4, packed.flatten() & 15], dim=1).flatten()[:n].long()
    values = quant_map.float()[codes] * absmax.float().repeat_interleave(blocksize)[:n]
    return values.reshape(shape), kind


def _untrained_norms(model: Model) -> list[str]:
    """Warnings for LayerNorms exactly at their initial values (weight 1, bias 0): a trained model's norms move, so
    such a norm was never trained, or its trained values were lost (as the Itera-Lite pruning scripts lose a
    layer's MoE weights, see _infer_config)."""
    untrained = [name for name, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
                 and bool((module.weight == 1).all()) and bool((module.bias == 0).all())]
    if not untrained:
        return []
    return [f"{', '.join(untrained)}: weight 1 and bias 0 exactly, their initial values: untrained weights in the "
            "baseline"]


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
                warnings.append(f"layer {i}: its router has 0 experts, so its trained MoE weights are not in the file "
                                "(the Itera-Lite pruning and mixed-precision scripts count experts under .moe.moe., "
                                "find 0 and load with strict=False, which drops them; that code cannot run such a "
                                "layer); the import leaves the layer without its MoE block")
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
        top_k, top_k_source = study_top_k, "the study's model.top_k (" + (
            "the file's config has no top_k_experts)" if file_config else "the file has no config)")
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
