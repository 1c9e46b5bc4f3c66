"""Export a trained model (float32 or INT4) to ONNX and verify it against torch before anything is written.

The graphs are built by iteralite.onnxgraph from the model's own tensors; an INT4 model's nibbles, scales and zero
points go in as they are (quant.py's layout), so ONNX Runtime computes what the torch INT4 model computes. As
Optimum's exporter does, the export is checked with ONNX Runtime on fresh inputs (test windows) before it counts:
- the sequence graph's logits equal torch's (max abs difference within `logits_tolerance`, relative to the largest
  logit where that exceeds 1: 1e-4 for float32, 1e-3 for INT4 against the torch INT4 model);
- the step graph, run token by token over a window, equals the sequence graph (logits, and the final state relative
  to its own largest entry, within the same tolerance);
- the test perplexity through ONNX Runtime is within 0.1% of torch's on the same windows.
A mismatch raises ExportError naming the model, the graph and the difference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime
import torch

from . import onnxgraph, quant, serve
from .architectures import facet
from .onnxgraph import Int4Weight
from .tokens import eval_windows
from .train import perplexity

log = logging.getLogger(__name__)

TORCH_INT4_PATH = "unpacked"  # the torch INT4 model compared with: as evaluation, dequantized once, float32 matmuls
PERPLEXITY_TOLERANCE = 1e-3  # relative: ONNX Runtime's test perplexity within 0.1% of torch's
RELATIVE = "max abs, relative to the largest entry where that exceeds 1"
# MatMulNBits' accuracy_level per graph: 0 computes in float32 (the torch INT4 model's values); 4 quantizes the
# activations to int8, a little faster per step but far outside the verification's tolerance (docs/deploy.md has
# both measurements and their command, tools/accuracy_level.py)
ACCURACY_LEVEL = {"sequence": 0, "step": 0}


class ExportError(RuntimeError):
    """An export that does not reproduce its torch model; the message names the model, graph and difference."""


@dataclass(frozen=True)
class ExportSettings:
    """The config's export section, less the model list: what changes an export's files."""

    verify_windows: int  # test windows (full-length sequences) the logits are compared on
    verify_tokens: int  # test tokens the perplexity is compared on


def model_tensors(model: torch.nn.Module) -> dict[str, onnxgraph.Weight]:
    """The model's tensors by their state_dict names, as numpy; the weight of every 4-bit layer (quant.Int4Linear,
    Int4Embedding) as an Int4Weight holding its nibbles, scales and zero points."""
    tensors = {name: t.detach().float().cpu().numpy() for name, t in model.state_dict().items()
               if t.is_floating_point()}
    for name, module in model.named_modules():
        if isinstance(module, quant.Int4Linear):
            for part in ("nibbles", "scale", "zero_point"):
                tensors.pop(f"{name}.{part}", None)
            tensors[f"{name}.weight"] = Int4Weight(
                module.nibbles.cpu().numpy(), module.scale.float().cpu().numpy(),
                module.zero_point.cpu().numpy(), module.group_size)
    return tensors


def build_graphs(model, metadata: dict) -> dict[str, tuple]:
    """{'sequence': (ModelProto, float_layers), 'step': (...)} for a torch model."""
    tensors = model_tensors(model)
    builder = facet(model.cfg.architecture, "onnx").Builder
    return {graph: onnxgraph.build(builder, tensors, model.cfg, graph, level, metadata)
            for graph, level in ACCURACY_LEVEL.items()}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _check(model_id: str, graph: str, what: str, diff: float, tolerance: float, measure: str = "max abs") -> None:
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"export of {model_id}: the {graph} graph's {what} by {diff:.3g} ({measure}), more than "
                          f"the tolerance {tolerance:g}")


@torch.no_grad()
def verify(model_id: str, model, runtime: serve.OnnxModel, test_tokens: torch.Tensor, settings: ExportSettings,
           logits_tolerance: float) -> dict:
    """Compare ONNX Runtime with torch on test windows (see module docstring); returns the figures."""
    seq = model.cfg.max_seq
    windows = eval_windows(test_tokens, seq, settings.verify_windows * seq)[:, :-1]  # (w, seq)
    torch_logits, _ = model(windows)
    onnx_logits, state = runtime.prefill(windows.numpy())
    sequence_diff = _max_diff(onnx_logits, torch_logits.numpy())
    # relative to the largest logit where that exceeds 1: float32 rounding in the scan grows along the window (at 512
    # positions an imported model's logits, up to 18, differ by 1.5e-4, 3e-5 within the first 128)
    scale = max(1.0, float(np.abs(torch_logits.numpy()).max()))
    _check(model_id, "sequence", "logits differ from torch's", sequence_diff / scale, logits_tolerance, RELATIVE)

    # the step graph over the first two windows, token by token, against the sequence graph
    rows = windows[:2].numpy()
    stepped, step_state = [], runtime.empty_state(rows.shape[0])
    for position in range(seq):
        logits, step_state = runtime.step(rows[:, position], np.full(rows.shape[0], position), step_state)
        stepped.append(logits)
    step_diff = _max_diff(np.stack(stepped, axis=1), onnx_logits[:2])
    # relative to each state's largest entry where that exceeds 1: the Itera-Lite architecture's shared scan state
    # sums its channels' drives and reaches 100-150 in trained models, where float32 carries about 1e-5 of absolute
    # error
    state_diff = max([_max_diff(step_state[name], state[name][:2]) / max(1.0, float(np.abs(state[name]).max()))
                      for name in state], default=0.0)
    _check(model_id, "step", "logits over a window differ from the sequence graph's", step_diff / scale,
           logits_tolerance, RELATIVE)
    _check(model_id, "step", "final state differs from the sequence graph's", state_diff, logits_tolerance, RELATIVE)

    torch_ppl = perplexity(model, test_tokens, settings.verify_tokens)
    onnx_ppl = runtime.perplexity(test_tokens.numpy(), settings.verify_tokens)
    relative = abs(onnx_ppl - torch_ppl) / torch_ppl
    if not relative <= PERPLEXITY_TOLERANCE:
        raise ExportError(f"export of {model_id}: test perplexity through ONNX Runtime {onnx_ppl:.4f} differs from "
                          f"torch's {torch_ppl:.4f} by {100 * relative:.3f}%, more than "
                          f"{100 * PERPLEXITY_TOLERANCE:g}%")
    return {"windows": int(windows.shape[0]), "window_tokens": seq, "logits_tolerance": logits_tolerance,
            "logits_scale": scale, "sequence_max_abs_diff": sequence_diff, "step_max_abs_diff": step_diff,
            "state_max_diff": state_diff,
            "perplexity_tokens": int(eval_windows(test_tokens, seq, settings.verify_tokens)[:, 1:].numel()),
            "torch_perplexity": torch_ppl, "onnxruntime_perplexity": onnx_ppl,
            "perplexity_relative_diff": relative}


def export(model_id: str, model_path: str, test_tokens: torch.Tensor, tokenizer_sha256: str,
           settings: ExportSettings) -> tuple[dict[str, bytes], dict]:
    """Both graphs, built and verified in ONNX Runtime from memory: ({file name: bytes}, export.json's content).
    Raises ExportError before the caller has anything to write when the verification fails."""
    started = time.perf_counter()
    model = quant.load_model(model_path, TORCH_INT4_PATH)
    int4 = isinstance(model, quant.Int4Head)
    metadata = {"iteralite.model": model_id, "iteralite.tokenizer_sha256": tokenizer_sha256}
    graphs = build_graphs(model, metadata)
    files = {serve.GRAPH_FILES[graph]: proto.SerializeToString() for graph, (proto, _) in graphs.items()}
    manifest = {
        "format": onnxgraph.FORMAT, "model": model_id, "precision": "int4" if int4 else "float32",
        "opset": onnxgraph.OPSET, "ir_version": onnxgraph.IR_VERSION, "onnxruntime": onnxruntime.__version__,
        "config": model.cfg.to_dict(), "interface": onnxgraph.interface(model.cfg),
        "accuracy_level": ACCURACY_LEVEL,
        "float_layers": graphs["sequence"][1], "tokenizer_sha256": tokenizer_sha256,
        "graphs": {graph: {"file": serve.GRAPH_FILES[graph], "bytes": len(files[serve.GRAPH_FILES[graph]]),
                           "sha256": serve.sha256_bytes(files[serve.GRAPH_FILES[graph]]),
                           "nodes": len(proto.graph.node), "initializers": len(proto.graph.initializer),
                           "weight_bytes": onnxgraph.weight_bytes(proto)}
                   for graph, (proto, _) in graphs.items()},
    }
    runtime = serve.OnnxModel.from_bytes(files, manifest, threads=torch.get_num_threads())
    manifest["verification"] = verify(model_id, model, runtime, test_tokens, settings,
                                      1e-3 if int4 else 1e-4)
    manifest["export_seconds"] = round(time.perf_counter() - started, 2)
    log.info("%s: exported (%s), logits within %.2g of torch, perplexity %.4f (torch %.4f), %.1f s", model_id,
             manifest["precision"], manifest["verification"]["sequence_max_abs_diff"],
             manifest["verification"]["onnxruntime_perplexity"], manifest["verification"]["torch_perplexity"],
             manifest["export_seconds"])
    return files, manifest
