"""The files the Itera-Lite code saves, written from a model of this architecture, each with what that code computes
on it: for trying the import without that code (tools/itera_lite_files.py), its tests, and its fidelity figures
(`python tools/itera_lite_files.py fidelity`, docs/import.md).

One writer per kind of `torch.save` in the Itera-Lite repository (CisnerosCodes/Itera-Lite, read for its layouts),
named after the code that saves it. Each returns a `Layout`: the object that code hands to torch.save, and its
forward: the logits the Itera-Lite model computes from that file as that code runs it (None where it cannot run it).
Where that code quantizes, the forward is its own quantized one: torch's dynamic int8 Linears (the int8 lm_head
included: that model calls its head as a Linear), QuantizedLinear's dequantization, bitsandbytes' 4-bit Linears
computing in float16 (their compute dtype; emulated here by rounding inputs, weights and outputs to float16).
"""

from __future__ import annotations

import copy
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import Model

NF4_CODES = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023,
             1.0]  # bitsandbytes' NF4 table (Dettmers et al., 2023, arXiv:2305.14314)
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes' CUDA block sizes: weights, then the absmax of double quantization


@dataclass
class Layout:
    writer: str  # the Itera-Lite code that saves it
    blob: object  # what it hands to torch.save
    forward: Callable[[torch.Tensor], torch.Tensor] | None  # ids (b, l) -> the logits that code computes on it


def itera_lite_config(model: Model) -> dict:
    """The Itera-Lite config of a model of this architecture (models/config.py's IteraLiteConfig fields)."""
    cfg = model.cfg
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_layers": cfg.n_layers,
            "ssm_state_size": cfg.d_state, "ssm_conv_kernel": cfg.d_conv,
            "ssm_expand_factor": cfg.d_inner // cfg.d_model,
            "num_experts": cfg.n_experts, "expert_size": cfg.expert_hidden, "top_k_experts": cfg.top_k,
            "moe_layers": list(cfg.moe_layers), "load_balance_loss_weight": 0.01, "max_seq_length": cfg.max_seq,
            "dropout": 0.1, "layer_norm_eps": cfg.norm_eps, "use_flash_attn": False, "gradient_checkpointing": False}


def saved_state(model: Model) -> dict:
    """The model's state dict as the Itera-Lite model holds it: the tied lm_head.weight and the routers'
    expert_counts buffers besides."""
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["embedding.weight"]
    for i in model.cfg.moe_layers:
        if model.cfg.experts_in(i):
            state[f"layers.{i}.moe.layer.router.expert_counts"] = torch.full((model.cfg.experts_in(i),), 0.5)
    return state


def float_forward(model: Model) -> Callable:
    return lambda ids: model(ids)[0]


def trainer(model: Model) -> Layout:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    return Layout("utils/training.py Trainer.save_checkpoint", {
        "model_state_dict": saved_state(model), "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(), "epoch": 3, "global_step": 1200, "best_val_loss": 2.5,
        "train_losses": [3.1, 2.7], "val_losses": [2.9, 2.5]}, float_forward(model))


def distilled(model: Model) -> Layout:
    return Layout("utils/distillation.py DistillationTrainer.save_student",
                  {"model_state_dict": saved_state(model), "compression_ratio": 3.6}, float_forward(model))


def quality(model: Model) -> Layout:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Layout("phase8_train_quality.py", {
        "epoch": 4, "model_state_dict": saved_state(model), "config": itera_lite_config(model),
        "optimizer_state_dict": optimizer.state_dict(), "train_loss": 2.4, "val_loss": 2.6, "val_perplexity": 13.5},
        float_forward(model))


def production(model: Model) -> Layout:
    """train_production.py's `config` is its YAML training config, not the model's."""
    training_config = {"model": {"config": "tiny"}, "training": {"epochs": 3, "lr": 3e-4, "batch_size": 16},
                       "data": {"dataset": "wikitext-103"}}
    return Layout("train_production.py Trainer._save_checkpoint", {
        "epoch": 2, "global_step": 900, "model_state_dict": saved_state(model), "optimizer_state_dict": None,
        "scheduler_state_dict": None, "best_val_loss": 2.6, "best_val_perplexity": 13.5, "config": training_config},
        float_forward(model))


def fp16(model: Model) -> Layout:
    """phase8_simple_compress.py: every tensor .half(), the float32 checkpoint it came from nested inside."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in rounded.state_dict().values():
            tensor.copy_(tensor.half().float())
    return Layout("phase8_simple_compress.py save_compressed_model", {
        "model_state_dict": {k: v.half() for k, v in saved_state(model).items()}, "config": itera_lite_config(model),
        "precision": "fp16", "compression_ratio": 2.0, "original_checkpoint": quality(model).blob},
        float_forward(rounded))


def int8_dynamic(model: Model) -> Layout:
    """phase4_train.py apply_quantization and utils/quantization.py quantize_model_int8: torch's dynamic int8
    quantization of every Linear, the LM head (a Linear tied to the table) its own int8 copy."""
    quantized = quantized_copy(model)
    return Layout("phase4_train.py apply_quantization; utils/quantization.py quantize_model_int8",
                  quantized.state_dict(), lambda ids: quantized.lm_head(quantized.hidden_states(ids)[0]))


def quantized_copy(model: Model) -> nn.Module:
    with_head = copy.deepcopy(model)
    with_head.lm_head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=False)
    with_head.lm_head.weight = with_head.embedding.weight
    return torch.ao.quantization.quantize_dynamic(with_head, {nn.Linear}, torch.qint8)


def int4_simulated(model: Model) -> Layout:
    """utils/advanced_quantization.py save_quantized_model: every matrix rounded to 16 levels of max|W| / 7 and kept
    in float32; `config` is the model's pickled models.config.IteraLiteConfig (see `save`)."""
    rounded = copy.deepcopy(model)
    info = {"scales": {}, "zero_points": {}, "original_dtypes": {}}
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() > 1:
                scale = param.abs().max() / 7
                param.copy_((param / scale).round().clamp(-8, 7) * scale)
                info["scales"][name], info["zero_points"][name] = scale.item(), 0
                info["original_dtypes"][name] = "torch.float32"
    return Layout("utils/advanced_quantization.py AdvancedQuantizer.save_quantized_model", {
        "model_state_dict": saved_state(rounded), "config": PickledConfig(itera_lite_config(model)),
        "quantization_info": info}, float_forward(rounded))


def mixed_precision(model: Model) -> Layout:
    """utils/mixed_precision.py save_mixed_precision_checkpoint with its aggressive map: the SSM blocks' in_proj and
    out_proj as QuantizedLinear (int8 rows, a scale per row: the 99.99th percentile of |W| / 127), the tables and
    the SSM's norms, conv1d, A_log and D in float16, the rest float32; numpy scalars in its metadata."""
    state, computed = saved_state(model), copy.deepcopy(model)
    for name in list(state):
        module = name.rsplit(".", 1)[0]
        if module.endswith(("ssm.in_proj", "ssm.out_proj")):
            weight = state.pop(name)
            scale = torch.quantile(weight.abs(), 0.9999, dim=1) / 127
            state[module + ".weight_int8"] = (weight / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
            state[module + ".scale"] = scale
            computed.get_submodule(module).weight.data = state[module + ".weight_int8"].float() * scale[:, None]
        elif name in ("embedding.weight", "position_embedding.weight", "lm_head.weight") or any(
                part in name for part in (".ssm.norm.", ".ssm.conv1d.", ".ssm.ssm.A_log", ".ssm.ssm.D")):
            state[name] = state[name].half()
    rounded = {k: v.float() for k, v in state.items() if v.dtype == torch.float16 and k != "lm_head.weight"}
    computed.load_state_dict(rounded, strict=False)
    metadata = {"precision_map": {"layers.*.ssm.in_proj.*": "int8", "layers.*.ssm.out_proj.*": "int8"},
                "calibration_method": "percentile", "calibration_samples": 100, "percentile": 99.99,
                "benchmark_results": {"perplexity": np.float64(14.2), "failed_batches_perplexity": float("inf")}}
    return Layout("utils/mixed_precision.py save_mixed_precision_checkpoint (aggressive map)", {
        "model_state_dict": state, "config": itera_lite_config(model), "mixed_precision_metadata": metadata},
        float_forward(computed))


def nf4(model: Model) -> Layout:
    """utils/native_quantization.py export_quantized_model: every Linear (the LM head among them) a bitsandbytes
    Linear4bit, NF4 in blocks of 64 with double-quantized absmax, as bitsandbytes serialises a quantized one."""
    state = {k: v for k, v in saved_state(model).items()}
    computed = copy.deepcopy(model)
    computed.lm_head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=False)
    computed.lm_head.weight = nn.Parameter(model.embedding.weight.detach().clone())
    for name, module in list(computed.named_modules()):
        if isinstance(module, nn.Linear):
            packed, dequantized = nf4_quantized(state.pop(name + ".weight"))
            state |= {f"{name}.weight{leaf}": tensor for leaf, tensor in packed.items()}
            module.weight.data = dequantized
            module.__class__ = Float16Linear
    return Layout("utils/native_quantization.py export_quantized_model", {
        "model_state_dict": state, "config": itera_lite_config(model),
        "quantization_config": {"bits": 4, "use_double_quant": True, "quant_type": "nf4", "compute_dtype": "float16"},
        "statistics": {"total_params": sum(p.numel() for p in model.parameters())}},
        lambda ids: computed.lm_head(computed.hidden_states(ids)[0]))


class Float16Linear(nn.Linear):
    """A bitsandbytes 4-bit Linear's arithmetic: input, dequantized weight and output in float16."""

    def forward(self, x):
        bias = None if self.bias is None else self.bias.half().float()
        return F.linear(x.half().float(), self.weight.half().float(), bias).half().float()


def nf4_quantized(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({"": packed codes, ".absmax": ..., ...} as bitsandbytes stores a 4-bit weight, the weight it dequantizes to)."""
    flat = weight.flatten().float()
    n = flat.numel()
    blocks = F.pad(flat, (0, -n % NF4_BLOCK)).view(-1, NF4_BLOCK)
    absmax = blocks.abs().amax(1).clamp_min(1e-12)
    codes_table = torch.tensor(NF4_CODES)
    codes = (blocks / absmax[:, None])[..., None].sub(codes_table).abs().argmin(-1).flatten()[:n].to(torch.uint8)
    codes = F.pad(codes, (0, n % 2))
    offset = absmax.mean().item()  # double quantization: absmax - its mean, 8 bits per value, a float per 256
    centred = F.pad(absmax - offset, (0, -absmax.numel() % NESTED_BLOCK)).view(-1, NESTED_BLOCK)
    nested_absmax = centred.abs().amax(1).clamp_min(1e-12)
    nested_map = torch.linspace(-1, 1, 256)
    nested_codes = (centred / nested_absmax[:, None])[..., None].sub(nested_map).abs().argmin(-1).flatten()
    nested_codes = nested_codes[: absmax.numel()].to(torch.uint8)
    quant_state = {"quant_type": "nf4", "blocksize": NF4_BLOCK, "dtype": "float32", "shape": list(weight.shape),
                   "nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32", "nested_offset": offset}
    packed = {"": (codes[0::2] << 4 | codes[1::2]).view(-1, 1), ".absmax": nested_codes, ".quant_map": codes_table,
              ".nested_absmax": nested_absmax, ".nested_quant_map": nested_map,
              ".quant_state.bitsandbytes__nf4": torch.tensor(list(json.dumps(quant_state).encode()), dtype=torch.uint8)}
    block_scale = nested_map[nested_codes.long()] * nested_absmax.repeat_interleave(NESTED_BLOCK)[: absmax.numel()]
    dequantized = codes_table[codes[:n].long()] * (block_scale + offset).repeat_interleave(NF4_BLOCK)[:n]
    return packed, dequantized.view_as(weight)


def without_experts(model: Model) -> Layout:
    """phase7_prune.py save_pruned_checkpoint (and phase7_mixed_precision.py, which loads the same way): it counts
    experts under .moe.moe. where the keys say .moe.layer., finds 0, builds routers of 0 experts and loads the file
    with strict=False, so every MoE layer's trained weights are dropped and its norm keeps its initial values. The
    Itera-Lite code cannot run the result (top-2 of 0 experts): no forward."""
    state = {k: v for k, v in saved_state(model).items() if ".moe.layer." not in k}
    for i in model.cfg.moe_layers:
        state[f"layers.{i}.moe.layer.router.gate.weight"] = torch.zeros(0, model.cfg.d_model)
        state[f"layers.{i}.moe.layer.router.expert_counts"] = torch.zeros(0)
        state[f"layers.{i}.moe.layer.norm.weight"] = torch.ones(model.cfg.d_model)
        state[f"layers.{i}.moe.layer.norm.bias"] = torch.zeros(model.cfg.d_model)
    config = itera_lite_config(model) | {"num_experts": 0}
    return Layout("phase7_prune.py save_pruned_checkpoint", {
        "model_state_dict": state, "config": config, "timestamp": "2025-10-09T12:00:00",
        "pruning_stats": {"original_params": 1, "pruned_params": 1, "layer_stats": {"layers.0": (64, 48)}},
        "benchmark_results": {}}, None)


WRITERS = {"trainer": trainer, "distilled": distilled, "quality": quality, "production": production, "fp16": fp16,
           "int8": int8_dynamic, "int4-simulated": int4_simulated, "mixed-precision": mixed_precision, "nf4": nf4,
           "without-experts": without_experts}


class PickledConfig:
    """Stands for the Itera-Lite code's `models.config.IteraLiteConfig` instance, which utils/advanced_quantization.py
    pickles into its file: `save` writes it under that qualified name, with these fields."""

    def __init__(self, fields: dict):
        self.__dict__.update(fields)


def save(layout: Layout, path) -> None:
    """torch.save of the layout's object, a PickledConfig pickled as models.config.IteraLiteConfig: pickle names a
    class by its module and qualified name and checks the module holds it, so both are set while it saves."""
    if "models" in sys.modules:
        raise RuntimeError("a module named 'models' is imported: cannot write models.config.IteraLiteConfig")
    package, module = types.ModuleType("models"), types.ModuleType("models.config")
    package.config, module.IteraLiteConfig = module, PickledConfig
    original = (PickledConfig.__module__, PickledConfig.__qualname__)
    PickledConfig.__module__, PickledConfig.__qualname__ = "models.config", "IteraLiteConfig"
    sys.modules |= {"models": package, "models.config": module}
    try:
        torch.save(layout.blob, path)
    finally:
        PickledConfig.__module__, PickledConfig.__qualname__ = original
        del sys.modules["models"], sys.modules["models.config"]
