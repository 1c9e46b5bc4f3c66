"""Speed of several models measured side by side in one process, in torch and, for their ONNX exports, in ONNX
Runtime: batched throughput, per-token step latency at several context lengths, weight memory; repeats interleaved
across models and runtimes so drift hits all of them alike. The peak RSS of a fresh serving process is measured
apart (serving_rss_mb)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch

from . import serve
from .tokens import eval_windows


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


TIMED_STEPS = 8  # one step takes milliseconds: a block of steps is timed to keep clock jitter out of the figure


class TorchRunner:
    """A torch model on its device: the batched forward and the recurrent step (the model's `step`)."""

    runtime = "torch"

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device

    def clock(self) -> float:
        return _clock(self.device)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> None:
        self.model(batch.to(self.device))

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, length: int):
        """The cache after the prompt's first `length` tokens, step by step (step returns a new cache and never
        changes the one it is given, so every repeat starts from this one)."""
        cache = self.model.empty_cache(prompt.shape[0], self.device)
        for position in range(length):
            _, cache = self.model.step(prompt[:, position].to(self.device), position, cache)
        return cache

    @torch.no_grad()
    def steps(self, prompt: torch.Tensor, first: int, last: int, cache) -> None:
        prompt = prompt.to(self.device)
        for position in range(first, last):
            _, cache = self.model.step(prompt[:, position], position, cache)

    def weight_mb(self) -> float:
        return weight_bytes(self.model) / 2**20


class OnnxRunner:
    """An export in ONNX Runtime (serve.OnnxModel): the sequence graph for the batch, the step graph per token."""

    runtime = "onnxruntime"

    def __init__(self, model: serve.OnnxModel):
        self.model = model

    def clock(self) -> float:
        return time.perf_counter()

    def forward(self, batch: torch.Tensor) -> None:
        self.model.prefill(batch.numpy())

    def prefill(self, prompt: torch.Tensor, length: int):
        """The state after the prompt's first `length` tokens, from one call of the sequence graph."""
        if length == 0:
            return self.model.empty_state(prompt.shape[0])
        return self.model.prefill(prompt[:, :length].numpy())[1]

    def steps(self, prompt: torch.Tensor, first: int, last: int, state) -> None:
        ids = prompt.numpy()
        for position in range(first, last):
            _, state = self.model.step(ids[:, position], np.full(ids.shape[0], position), state)

    def weight_mb(self) -> float:
        return self.model.manifest["graphs"]["sequence"]["weight_bytes"] / 2**20


def torch_runners(models: dict) -> dict:
    """{(name, "torch"): TorchRunner} for measure()."""
    return {(name, "torch"): TorchRunner(model) for name, model in models.items()}


def _time_forward(runner, batch) -> float:
    start = runner.clock()
    runner.forward(batch)
    return runner.clock() - start


def _time_steps(runner, prompt, context: int, cache) -> float:
    """Seconds per generation step over the last steps up to position context-1, from the prefilled `cache`."""
    first = max(0, context - TIMED_STEPS)
    start = runner.clock()
    runner.steps(prompt, first, context, cache)
    return (runner.clock() - start) / (context - first)


def measure(runners: dict, test_tokens: torch.Tensor, batch_size: int, repeats: int, contexts: list[int],
            device: torch.device) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Batched forward throughput and per-token step latency at each context, interleaved repeats, medians.
    `runners` maps (model, runtime) to a TorchRunner (the models are on `device`) or an OnnxRunner."""
    seq = min(r.model.cfg.max_seq if r.runtime == "torch" else r.model.max_seq for r in runners.values())
    batch = eval_windows(test_tokens, seq, batch_size * seq)[:batch_size, :seq]
    contexts = [c for c in contexts if c <= seq]
    prompt = batch[:1]
    forward = {key: [] for key in runners}
    steps = {(key, c): [] for key in runners for c in contexts}
    caches = {(key, c): r.prefill(prompt, max(0, c - TIMED_STEPS)) for key, r in runners.items() for c in contexts}
    for key, runner in runners.items():  # warm-up: first calls pay for allocation and kernel packing
        _time_forward(runner, batch)
        _time_steps(runner, prompt, contexts[0], caches[(key, contexts[0])])
    for _ in range(repeats):
        for key, runner in runners.items():
            forward[key].append(_time_forward(runner, batch))
            for c in contexts:
                steps[(key, c)].append(_time_steps(runner, prompt, c, caches[(key, c)]))
    threads = torch.get_num_threads()
    speed = pd.DataFrame([
        {"model": name, "runtime": runtime, "tokens_per_s": batch.numel() / statistics.median(forward[key]),
         "forward_ms": 1000 * statistics.median(forward[key]),
         "step_latency_ms": 1000 * statistics.median(steps[(key, contexts[-1])]),
         "weight_mem_mb": runner.weight_mb(),
         "peak_mem_mb": peak_forward_bytes(runner.model, batch.to(device)) / 2**20 if runtime == "torch" else None,
         "int4_path": getattr(runner.model, "int4_path", ""),
         "batch": f"{batch_size}x{seq}", "threads": threads,
         "repeats": repeats, "device": device.type if runtime == "torch" else "cpu", "machine": machine(device)}
        for key, runner in runners.items() for name, runtime in [key]
    ])
    latency = pd.DataFrame([
        {"model": name, "runtime": runtime, "context": c, "latency_ms": 1000 * statistics.median(steps[(key, c)])}
        for key in runners for name, runtime in [key] for c in contexts
    ])
    return speed, latency


SERVED_TOKENS = 64  # tokens a serving process generates while its peak RSS is measured
MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024  # getrusage's ru_maxrss: bytes on macOS, KiB on Linux


# Runs the command and prints its peak RSS (ru_maxrss: KiB on Linux, bytes on macOS). A fresh process's ru_maxrss
# starts from the memory of the process that forked it (Linux carries the parent's high-water mark through fork and
# exec), so the command is started from this small interpreter, never from the benchmark's own large process.
_PEAK_RSS = """import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if run.returncode:
    sys.exit(run.stderr.strip().splitlines()[-1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def serving_rss_mb(command: list[str]) -> float:
    """Peak resident memory (MiB) of a fresh process running `command`."""
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"serving process {command} failed: {run.stderr.strip()}")
    return int(run.stdout) * MAXRSS_BYTES / 2**20


def serving_commands(model_path: str, export_dir: str | None, tokenizer_path: str, prompt: str,
                     threads: int) -> dict[str, list[str]]:
    """The commands whose peak RSS is compared: torch generating with the model file (iteralite.torchserve), and
    ONNX Runtime serving its export (iteralite.serve, which never imports torch)."""
    common = ["--prompt", prompt, "--tokens", str(SERVED_TOKENS), "--threads", str(threads)]
    commands = {"torch": [sys.executable, "-m", "iteralite.torchserve", model_path, tokenizer_path, *common]}
    if export_dir:
        commands["onnxruntime"] = [sys.executable, "-m", "iteralite.serve", export_dir, *common]
    return commands


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
            texts.append(serve.decode(tokenizer, generated[0].tolist()))
        out[name] = texts
    return out
