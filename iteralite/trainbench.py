"""`make bench-train`: the training step of the project's path against the reference path and the no-scan floor,
and of the reference architecture (iteralite/reference: the Itera-Lite model at the same sizes, its shared-state
scan in closed form per chunk), side by side in one process, on the same batches, repeats interleaved, medians;
and the process's peak memory.

On CPU: the fused numba scan, the same with the GPU's MoE dispatch (every expert on every token), the reference scan
(torch ops), and the scan replaced by y = D * x (the floor: what a step costs without any scan), eager steps.
On CUDA: the project's path (Triton scan, static-shape MoE dispatch, the
step as one CUDA graph), the same path eager, the reference path (reference scan, gathered MoE, eager: the path before
the GPU kernels) and the floor (graphed).

Usage: python -m iteralite.trainbench [config.yaml] [threads] [repeats] [--device auto|cpu|cuda] [--sizes S,M,L]
Sizes: S is the config's model at its batch; M, L are larger IteraLites (SIZES); L128 is L at S's 32 x 128 windows,
for the cost per token against the sequence length. The last line reads, for the first size:
training: <N> tokens/s, <R>x the no-scan floor, peak RSS <M> MiB
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time

import torch
import yaml

from . import model as model_module
from . import scan
from .bench import machine
from .model import IteraLite, count_parameters
from .modelconfig import IteraLiteConfig
from .reference.config import ReferenceConfig
from .reference.model import ReferenceIteraLite
from .train import TrainConfig, batch_losses, eager_step, pick_device, training_step
from .workflow import bound_native_caches

# name -> (model overrides, batch size, window length); S takes the config's model and train.batch_size.
SIZES = {
    "S": ({}, None, None),
    "M": ({"d_model": 256, "n_layers": 8, "max_seq": 256, "d_inner": 512, "d_state": 16, "expert_hidden": 256}, 16,
          256),
    "L": ({"d_model": 512, "n_layers": 8, "max_seq": 512, "d_inner": 1024, "d_state": 16, "expert_hidden": 512}, 8,
          512),
    "L128": ({"d_model": 512, "n_layers": 8, "max_seq": 512, "d_inner": 1024, "d_state": 16, "expert_hidden": 512},
             32, 128),
}

# variant -> (scan implementation, dense MoE dispatch, graphed step), per device type; the first is the project's
# path and "floor" the no-scan floor.
VARIANTS = {
    "cpu": {"fused": ("auto", False, False), "dense_moe": ("auto", True, False),
            "reference": ("reference", False, False), "delta": ("delta", False, False),
            "floor": ("none", False, False)},
    "cuda": {"project": ("auto", True, True), "eager": ("auto", True, False),
             "reference": ("reference", False, False), "floor": ("none", True, True)},
}
LABELS = {"fused": "project's scan (fused CPU kernel)", "dense_moe": "the same, every expert on every token",
          "reference": "reference scan (torch ops), eager",
          "delta": "no scan, delta's path kept", "floor": "no scan (y = D * x)",
          "project": "Triton scan, dense MoE, CUDA graph", "eager": "Triton scan, dense MoE, eager",
          "architecture": "reference architecture (shared state)"}


DEFAULTS = (scan.IMPLEMENTATION, set(model_module.DENSE_DISPATCH_DEVICES))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settings(variant: tuple[str, bool, bool]):
    """Set the scan implementation and the MoE dispatch of a variant (read when a step runs or is captured)."""
    implementation, dense_moe, _ = variant
    scan.IMPLEMENTATION = implementation
    model_module.DENSE_DISPATCH_DEVICES = {"cpu", "cuda"} if dense_moe else set()


def make_step(model: IteraLite, cfg: TrainConfig, device: torch.device, variant, seq: int):
    """One training step of `model` as `step(batch)`: the CPU bench's eager AdamW step, or the training loop's own
    step on CUDA (graphed or eager)."""
    settings(variant)
    if device.type == "cuda":
        optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(cfg.lr, device=device),
                                      weight_decay=cfg.weight_decay, foreach=True, capturable=True)
        if not variant[2]:
            return eager_step(model, optimizer, cfg, None, device)
        example = torch.zeros(cfg.batch_size, seq + 1, dtype=torch.long, device=device)
        return training_step(model, optimizer, cfg, None, device, example)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)

    def step(batch):
        loss, _, _ = batch_losses(model, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    return step


def time_steps(steps: dict, batches: list[torch.Tensor], variants: dict, device: torch.device) -> dict:
    """Seconds per step of each variant, interleaved batch by batch."""
    times = {name: [] for name in steps}
    for batch in batches:
        for name, step in steps.items():
            settings(variants[name])
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    scan.IMPLEMENTATION, model_module.DENSE_DISPATCH_DEVICES = DEFAULTS
    return times


def bench_size(config: dict, size: str, device: torch.device, repeats: int) -> dict[str, float]:
    overrides, batch_size, seq = SIZES[size]
    # the project's model at the config's sizes; the reference architecture at the same sizes is timed beside it
    sizes = {k: v for k, v in config["model"].items() if k not in ("checkpoint", "architecture", "moe_layers")}
    model_cfg = IteraLiteConfig(vocab_size=config["tokenizer"]["vocab_size"], **{**sizes, **overrides})
    batch_size = batch_size or config["train"]["batch_size"]
    cfg = TrainConfig.from_dict({**config["train"], "seed": 0, "batch_size": batch_size})
    seq = seq or model_cfg.max_seq
    torch.manual_seed(0)
    dense = IteraLite(model_cfg).to(device)
    batches = [torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, seq + 1), device=device)
               for _ in range(repeats + 2)]
    variants = VARIANTS[device.type]
    project = next(iter(variants))
    # The reference architecture (iteralite/reference) at the same sizes, on the project's path settings.
    torch.manual_seed(0)
    reference_arch = ReferenceIteraLite(ReferenceConfig(vocab_size=model_cfg.vocab_size, **{
        k: getattr(model_cfg, k) for k in ("d_model", "n_layers", "max_seq", "d_inner", "d_state", "d_conv",
                                           "n_experts", "expert_hidden", "top_k")})).to(device)
    # The CPU reference scan last and shorter, so that its (l, b, di, n) tensors do not count in the peak.
    timed = {name: v for name, v in variants.items() if device.type == "cuda" or name != "reference"}
    steps = {name: make_step(copy.deepcopy(dense), cfg, device, variants[name], seq) for name in timed}
    variants = {**variants, "architecture": variants[project]}
    steps["architecture"] = make_step(reference_arch, cfg, device, variants["architecture"], seq)
    time_steps(steps, batches[:2], variants, device)  # warm-up: compilation (cached on disk), first allocations
    times = time_steps(steps, batches[2:], variants, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    peak = peak_memory_mb(device)
    if device.type == "cpu":
        reference = time_steps({"reference": make_step(copy.deepcopy(dense), cfg, device, variants["reference"], seq)},
                               batches[: min(4, repeats)], variants, device)["reference"][1:]
        median["reference"] = statistics.median(reference)
    tokens = cfg.batch_size * seq
    n_params = sum(p.numel() for p in dense.parameters())
    print(f"\nsize {size}: {n_params:,} parameters ({count_parameters(reference_arch):,} in the reference "
          f"architecture), batch {cfg.batch_size} x {seq}, AdamW, median of {repeats} "
          f"interleaved steps")
    floor = median["floor"]
    for name in variants:
        print(f"  {LABELS[name]:<38}{1000 * median[name]:>8.1f} ms/step{tokens / median[name]:>12,.0f} tokens/s"
              f"{median[name] / floor:>7.2f}x floor")
    print(f"  reference architecture / project's: {median['architecture'] / median[project]:.2f}x the time per "
          "token")
    return {"tokens_per_s": tokens / median[project], "floor_ratio": median[project] / floor, "peak_mb": peak,
            "per_token_s": median[project] / tokens}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="config/config.yaml")
    parser.add_argument("threads", nargs="?", type=int, default=2)
    parser.add_argument("repeats", nargs="?", type=int, default=7)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", default="S", help=f"comma-separated, of {', '.join(SIZES)}")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; choose from {list(SIZES)}")
    with open(args.config, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    bound_native_caches()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"{machine(device)}, {args.threads} thread(s); GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}, "
          f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}")
    results = {size: bench_size(config, size, device, args.repeats) for size in sizes}
    if {"L", "L128"} <= set(results):
        print(f"\nL per token at 8 x 512 / at 32 x 128: "
              f"{results['L']['per_token_s'] / results['L128']['per_token_s']:.2f}x")
    first = results[sizes[0]]
    memory = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    print(f"training: {first['tokens_per_s']:.0f} tokens/s, {first['floor_ratio']:.2f}x the no-scan floor, "
          f"{memory} {first['peak_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
