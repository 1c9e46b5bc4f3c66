"""`make bench-train`: the training step of the study's architecture on each of its paths (its model.py's
`training_paths`: the one training takes, the alternatives, a no-scan floor where it has one), and of every other
registered architecture at the same sizes, side by side in one process, on the same batches, repeats interleaved,
medians; and the process's peak memory.

Usage: python -m iteralite.trainbench [config.yaml ...] [--threads T] [--repeats R] [--device auto|cpu|cuda]
       [--sizes S,M,L]
Config files merge key by key as Snakemake merges them (`config/config.yaml config/selective_scan.yaml` times the
selective-scan study). Sizes: S is the config's model at its batch; M, L are larger models (SIZES); L128 is L at S's
32 x 128 windows, for the cost per token against the sequence length. The last line reads, for the first size:
training: <N> tokens/s[, <R>x the no-scan floor], peak RSS <M> MiB
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time

import torch

from .architectures import ARCHITECTURES, facet, study_architecture
from .architectures.configs import config_class
from .bench import MAXRSS_BYTES, machine
from .layers import TrainingPath, count_parameters
from .study import merged_config
from .train import TrainConfig, batch_losses, eager_step, pick_device, training_step
from .workflow import bound_native_caches

# The sizes every architecture's config has: another architecture is timed at the study's.
SHARED_SIZES = ("vocab_size", "d_model", "n_layers", "max_seq", "d_inner", "d_state", "d_conv", "n_experts",
                "expert_hidden", "top_k")

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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_BYTES / 2**20


def applied(paths: list[TrainingPath]) -> dict:
    """The current value of every setting the paths change, to restore after timing."""
    return {key: getattr(*key) for path in paths for key in path.settings}


def apply(settings: dict) -> None:
    """Set module attributes (read when a step runs or is captured)."""
    for (module, name), value in settings.items():
        setattr(module, name, value)


def make_step(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, path: TrainingPath, seq: int):
    """One training step of `model` as `step(batch)`: the CPU bench's eager AdamW step, or the training loop's own
    step on CUDA (graphed or eager)."""
    apply(path.settings)
    if device.type == "cuda":
        optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(cfg.lr, device=device),
                                      weight_decay=cfg.weight_decay, foreach=True, capturable=True)
        if not path.graphed:
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


def time_steps(steps: dict, batches: list[torch.Tensor], paths: dict[str, TrainingPath],
               device: torch.device) -> dict:
    """Seconds per step of each variant, interleaved batch by batch."""
    saved = applied(list(paths.values()))
    times = {name: [] for name in steps}
    for batch in batches:
        for name, step in steps.items():
            apply(paths[name].settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    apply(saved)
    return times


def bench_size(config: dict, size: str, device: torch.device, repeats: int) -> dict[str, float]:
    overrides, batch_size, seq = SIZES[size]
    architecture = study_architecture(config["model"])
    sizes = {k: v for k, v in config["model"].items() if k not in ("checkpoint", "architecture")}
    model_cfg = config_class(architecture)(vocab_size=config["tokenizer"]["vocab_size"], **{**sizes, **overrides})
    batch_size = batch_size or config["train"]["batch_size"]
    cfg = TrainConfig.from_dict({**config["train"], "seed": 0, "batch_size": batch_size})
    seq = seq or model_cfg.max_seq
    torch.manual_seed(0)
    dense = facet(architecture, "model").Model(model_cfg).to(device)
    batches = [torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, seq + 1), device=device)
               for _ in range(repeats + 2)]
    paths = facet(architecture, "model").training_paths(device.type)
    own = next(iter(paths))
    timed = {name: path for name, path in paths.items() if not path.timed_apart}
    steps = {name: make_step(copy.deepcopy(dense), cfg, device, path, seq) for name, path in timed.items()}
    labels = {name: path.label for name, path in paths.items()}
    for other in (name for name in ARCHITECTURES if name != architecture):  # on its own first path
        other_paths = facet(other, "model").training_paths(device.type)
        first = next(iter(other_paths))
        torch.manual_seed(0)
        other_cfg = config_class(other)(**{k: getattr(model_cfg, k) for k in SHARED_SIZES})
        paths[other], labels[other] = other_paths[first], f"{other} architecture ({other_paths[first].label})"
        steps[other] = make_step(facet(other, "model").Model(other_cfg).to(device), cfg, device, paths[other], seq)
    time_steps(steps, batches[:2], paths, device)  # warm-up: compilation (cached on disk), first allocations
    times = time_steps(steps, batches[2:], paths, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    peak = peak_memory_mb(device)
    for name in (name for name, path in paths.items() if path.timed_apart):  # last and shorter, after the peak
        apart = time_steps({name: make_step(copy.deepcopy(dense), cfg, device, paths[name], seq)},
                           batches[: min(4, repeats)], paths, device)[name][1:]
        median[name] = statistics.median(apart)
    tokens = cfg.batch_size * seq
    print(f"\nsize {size}: {architecture} architecture, {count_parameters(dense):,} parameters, batch "
          f"{cfg.batch_size} x {seq}, AdamW, median of {repeats} interleaved steps")
    floor = median.get("floor")
    for name in median:
        against = f"{median[name] / floor:>7.2f}x floor" if floor else ""
        print(f"  {labels[name]:<58}{1000 * median[name]:>8.1f} ms/step{tokens / median[name]:>12,.0f} tokens/s"
              f"{against}")
    for other in (name for name in ARCHITECTURES if name in median):
        print(f"  {other} / {architecture}: {median[other] / median[own]:.2f}x the time per token")
    return {"tokens_per_s": tokens / median[own], "floor_ratio": median[own] / floor if floor else None,
            "peak_mb": peak, "per_token_s": median[own] / tokens}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="*", default=["config/config.yaml"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sizes", default="S", help=f"comma-separated, of {', '.join(SIZES)}")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; choose from {list(SIZES)}")
    config = merged_config(args.config)
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
    floor = f", {first['floor_ratio']:.2f}x the no-scan floor" if first["floor_ratio"] else ""
    print(f"training: {first['tokens_per_s']:.0f} tokens/s{floor}, {memory} {first['peak_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
