"""Speed of several models measured side by side in one process: batched throughput, per-token step latency at
several context lengths, weight memory; repeats interleaved across models so drift hits all of them alike."""

from __future__ import annotations

import os
import platform
import statistics
import time

import pandas as pd
import torch

from .data import eval_windows


def machine(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{platform.machine()} {os.cpu_count()} cpus{gpu}, torch {torch.__version__}"


def _clock(device: torch.device) -> float:
    """Seconds, once every kernel queued on `device` has finished (CUDA runs them asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def weight_bytes(model) -> int:
    """Bytes the model's weights occupy in memory: parameters, buffers (4-bit nibbles as stored), and what an INT4
    layer built at load time (kernel layout, or float32 weights on the unpacked path)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        tensors += [t for t in (getattr(module, "unpacked", None), *(getattr(module, "packed", None) or ()))
                    if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def peak_forward_bytes(model, batch) -> int:
    """Weights plus the peak of memory allocated during one batched forward (CPU allocator events of the
    profiler, summed in order; on CUDA the allocator's own peak)."""
    if batch.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        model(batch)
        return torch.cuda.max_memory_allocated()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(batch)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage  # allocations minus frees of the op itself, nested ops apart
        peak = max(peak, live)
    return weight_bytes(model) + peak


@torch.no_grad()
def _time_forward(model, batch) -> float:
    start = _clock(batch.device)
    model(batch)
    return _clock(batch.device) - start


TIMED_STEPS = 8  # one step takes milliseconds: a block of steps is timed to keep clock jitter out of the figure


@torch.no_grad()
def _prefill(model, prompt, context: int):
    """The recurrent cache of the prompt's tokens before the timed block that ends at position context-1 (step
    returns a new cache and never changes the one it is given, so every repeat starts from this one)."""
    cache = model.empty_cache(prompt.shape[0])
    for position in range(max(0, context - TIMED_STEPS)):
        _, cache = model.step(prompt[:, position], position, cache)
    return cache


@torch.no_grad()
def _time_step(model, prompt, context: int, cache) -> float:
    """Seconds per generation step over the last steps up to position context-1, from the prefilled `cache`."""
    first = max(0, context - TIMED_STEPS)
    start = _clock(prompt.device)
    for position in range(first, context):
        _, cache = model.step(prompt[:, position], position, cache)
    return (_clock(prompt.device) - start) / (context - first)


def measure(models: dict, test_tokens: torch.Tensor, batch_size: int, repeats: int, contexts: list[int],
            device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Batched forward throughput and per-token step latency at each context, interleaved repeats, medians; the
    models are on `device`."""
    seq = min(m.cfg.max_seq for m in models.values())
    batch = eval_windows(test_tokens, seq, batch_size * seq)[:batch_size, :seq].to(device)
    contexts = [c for c in contexts if c <= seq]
    prompt = batch[:1]
    forward = {name: [] for name in models}
    steps = {(name, c): [] for name in models for c in contexts}
    caches = {(name, c): _prefill(model, prompt, c) for name, model in models.items() for c in contexts}
    for name, model in models.items():  # warm-up: first calls pay for allocation and kernel packing
        _time_forward(model, batch)
        _time_step(model, prompt, contexts[0], caches[(name, contexts[0])])
    for _ in range(repeats):
        for name, model in models.items():
            forward[name].append(_time_forward(model, batch))
            for c in contexts:
                steps[(name, c)].append(_time_step(model, prompt, c, caches[(name, c)]))
    threads = torch.get_num_threads()
    speed = pd.DataFrame([
        {"model": name, "tokens_per_s": batch.numel() / statistics.median(forward[name]),
         "forward_ms": 1000 * statistics.median(forward[name]),
         "step_latency_ms": 1000 * statistics.median(steps[(name, contexts[-1])]),
         "weight_mem_mb": weight_bytes(model) / 2**20, "peak_mem_mb": peak_forward_bytes(model, batch) / 2**20,
         "int4_path": getattr(model, "int4_path", ""),
         "batch": f"{batch_size}x{seq}", "threads": threads,
         "repeats": repeats, "device": device.type, "machine": machine(device)}
        for name, model in models.items()
    ])
    latency = pd.DataFrame([
        {"model": name, "context": c, "latency_ms": 1000 * statistics.median(steps[(name, c)])}
        for name in models for c in contexts
    ])
    return speed, latency


@torch.no_grad()
def samples(models: dict, tokenizer, prompts: list[str], new_tokens: int, device: torch.device,
            seed: int = 0) -> dict:
    """Sampled continuations of the same prompts by every model on `device` (temperature 0.8, the same seed)."""
    out = {}
    for name, model in models.items():
        texts = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer.encode(prompt).ids[: model.cfg.max_seq - 1]], device=device)
            generated = model.generate(ids, new_tokens, 0.8, torch.Generator(device).manual_seed(seed))
            texts.append(tokenizer.decode(generated[0].tolist()))
        out[name] = texts
    return out
