"""MatMulNBits' accuracy_level, measured: an INT4 model's graphs built at level 0 (float32 compute) and at level 4
(int8 activations), their logits against the torch INT4 model's, and their speed side by side (iteralite.bench).

    python tools/accuracy_level.py results/models/int4-finetuned/taylor-t40-distill-s1/model.pt results/tokens/tokens.pt

iteralite.export.ACCURACY_LEVEL holds the choice; docs/deploy.md the figures.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from iteralite import bench, export, onnxgraph, quant, serve, tokens
from iteralite.architectures import facet


def runtime_at(model, level: int) -> serve.OnnxModel:
    tensors, builder = export.model_tensors(model), facet(model.cfg.architecture, "onnx").Builder
    files = {serve.GRAPH_FILES[graph]: onnxgraph.build(builder, tensors, model.cfg, graph, level, {})[0]
             .SerializeToString() for graph in serve.GRAPH_FILES}
    manifest = {"config": model.cfg.to_dict(), "interface": onnxgraph.interface(model.cfg),
                "graphs": {"sequence": {"weight_bytes": 0}}}
    return serve.OnnxModel.from_bytes(files, manifest)


def main(model_path: str, tokens_path: str) -> None:
    torch.set_num_threads(1)
    model = quant.load_model(model_path, export.TORCH_INT4_PATH)
    test = tokens.load_tokens(tokens_path)[0]["test"]
    windows = tokens.eval_windows(test, model.cfg.max_seq, 2 * model.cfg.max_seq)[:, :-1]
    with torch.no_grad():
        expected = model(windows)[0].numpy()
    runners = {}
    for level in (0, 4):
        runtime = runtime_at(model, level)
        logits, _ = runtime.prefill(windows.numpy())
        print(f"accuracy_level {level}: logits within {np.abs(logits - expected).max():.3g} of the torch INT4 "
              f"model's (max abs, {windows.shape[0]} test windows)")
        runners[(f"accuracy_level {level}", "onnxruntime")] = bench.OnnxRunner(runtime)
    speed, _ = bench.measure(runners, test, 8, 7, [model.cfg.max_seq], torch.device("cpu"))
    print(speed[["model", "tokens_per_s", "step_latency_ms"]].to_string(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
