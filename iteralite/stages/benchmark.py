"""Rule benchmark: every model side by side in one process."""

from __future__ import annotations

import torch

from .. import bench, data, quant
from ..artifacts import write_csv, write_json
from ..train import pick_device


def benchmark(model_ids: list[str], paths: list[str], tokens_path: str, tokenizer_path: str, settings: dict,
              out: dict) -> None:
    """Fixed threads, interleaved repeats, medians, on the job's device: a GPU where the job has one
    (pick_device("auto")), the CPU otherwise; the speed table records it. `settings` is the config's benchmark
    section. INT4 models take the fastest matmul path for that device (`auto`); the speed table records the path
    each took."""
    torch.set_num_threads(settings["threads"])
    device = pick_device("auto")
    models = {m: quant.load_model(p, "auto", device) for m, p in zip(model_ids, paths)}
    tokens, _ = data.load_tokens(tokens_path)
    speed, latency = bench.measure(models, tokens["test"], settings["batch_size"], settings["repeats"],
                                   settings["contexts"], device)
    write_csv(out["speed"], speed)
    write_csv(out["latency"], latency)
    tokenizer = data.load_tokenizer(tokenizer_path)
    write_json(out["samples"], bench.samples(models, tokenizer, settings["prompts"], settings["sample_tokens"],
                                             device))
