"""Rule benchmark: every model side by side in one process, in torch and, for the exported ones, in ONNX Runtime."""

from __future__ import annotations

import pandas as pd
import torch

from .. import bench, data, loadtest, quant, serve
from ..artifacts import write_csv, write_json
from ..tokens import load_tokens


def benchmark(model_ids: list[str], paths: list[str], exports: dict[str, str], tokens_path: str,
              tokenizer_path: str, settings: dict, device: torch.device, out: dict) -> None:
    """Fixed threads, interleaved repeats, medians, on the config's device (train.pick_device: with `auto`, a GPU
    where the job has one, the CPU otherwise); the speed table records it. `settings` is the config's benchmark
    section; `exports` maps each exported model to its export directory, served by ONNX Runtime on the CPU beside
    its torch model. INT4 models take the fastest matmul path for that device (`auto`); the speed table records
    the path each took. Each exported model's serving process (a fresh one per runtime, generating
    bench.SERVED_TOKENS tokens) has its peak RSS measured after the timings, so that it does not run beside them;
    then each export is served over HTTP to `served_clients` concurrent clients in turn (iteralite.loadtest)."""
    threads = settings["threads"]
    torch.set_num_threads(threads)
    models = {m: quant.load_model(p, "auto", device) for m, p in zip(model_ids, paths)}
    runners = bench.torch_runners(models)
    runners |= {(m, "onnxruntime"): bench.OnnxRunner(serve.OnnxModel.load(d, threads)) for m, d in exports.items()}
    tokens, _ = load_tokens(tokens_path)
    speed, latency = bench.measure(runners, tokens["test"], settings["batch_size"], settings["repeats"],
                                   settings["contexts"], device)
    served = []
    for model_id, path in zip(model_ids, paths):
        if model_id in exports:
            commands = bench.serving_commands(path, exports[model_id], tokenizer_path, settings["prompts"][0], threads)
            served += [{"model": model_id, "runtime": runtime, "serve_rss_mb": bench.serving_rss_mb(command)}
                       for runtime, command in commands.items()]
    if served:
        speed = speed.merge(pd.DataFrame(served), on=["model", "runtime"], how="left")
    else:
        speed["serve_rss_mb"] = None
    write_csv(out["speed"], speed)
    write_csv(out["latency"], latency)
    load = [{"model": model_id, **row} for model_id, directory in exports.items()
            for row in loadtest.measure(directory, settings["served_clients"], settings["served_requests"],
                                        settings["prompts"], settings["served_tokens"], threads)]
    write_csv(out["load"], pd.DataFrame(load, columns=loadtest.COLUMNS))
    tokenizer = data.load_tokenizer(tokenizer_path)
    write_json(out["samples"], bench.samples(models, tokenizer, settings["prompts"], settings["sample_tokens"],
                                             device))
