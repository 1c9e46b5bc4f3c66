"""`make bench-train`: the default model's training step with the project's scan, with the reference scan, and
with the scan replaced by y = D * x (the floor: what a step costs without any scan), side by side in one process,
on the same batches, repeats interleaved, medians; and the process's peak resident memory.

Usage: python -m iteralite.trainbench [config.yaml] [threads] [repeats]
The last line reads: training: <N> tokens/s, <R>x the no-scan floor, peak RSS <M> MB
"""

from __future__ import annotations

import copy
import os
import resource
import statistics
import sys
import time

import torch
import yaml

from . import scan
from .bench import machine
from .model import IteraLite, IteraLiteConfig
from .train import TrainConfig, batch_losses
from .workflow import bound_native_caches

IMPLEMENTATIONS = {"fused": "auto", "floor": "none", "delta": "delta"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_step(model: IteraLite, cfg: TrainConfig):
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)

    def step(batch):
        loss, _, _ = batch_losses(model, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    return step


def time_steps(steps: dict, batches: list[torch.Tensor], implementations: dict) -> dict[str, list[float]]:
    """Seconds per step of each implementation, interleaved batch by batch."""
    times = {name: [] for name in steps}
    for batch in batches:
        for name, step in steps.items():
            scan.IMPLEMENTATION = implementations[name]
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
    scan.IMPLEMENTATION = "auto"
    return times


def main(argv: list[str]) -> None:
    config = yaml.safe_load(open(argv[0] if argv else "config/config.yaml", encoding="utf-8"))
    threads = int(argv[1]) if len(argv) > 1 else 2
    repeats = int(argv[2]) if len(argv) > 2 else 7
    bound_native_caches()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_cfg = IteraLiteConfig(vocab_size=config["tokenizer"]["vocab_size"],
                                **{k: v for k, v in config["model"].items() if k != "checkpoint"})
    cfg = TrainConfig.from_dict({**config["train"], "seed": 0})
    dense = IteraLite(model_cfg)
    seq = model_cfg.max_seq + 1
    batches = [torch.randint(0, model_cfg.vocab_size, (cfg.batch_size, seq)) for _ in range(repeats + 2)]
    steps = {name: make_step(copy.deepcopy(dense), cfg) for name in IMPLEMENTATIONS}
    time_steps(steps, batches[:2], IMPLEMENTATIONS)  # warm-up: kernel compilation (cached on disk), first allocations
    times = time_steps(steps, batches[2:], IMPLEMENTATIONS)
    peak = peak_rss_mb()
    # The reference scan last, so that its (l, b, di, n) tensors do not count in the peak above.
    reference = time_steps({"reference": make_step(copy.deepcopy(dense), cfg)}, batches[: min(4, repeats)],
                           {"reference": "reference"})["reference"][1:]
    tokens = cfg.batch_size * model_cfg.max_seq
    median = {name: statistics.median(t) for name, t in times.items()}
    median["reference"] = statistics.median(reference)
    print(f"{machine()}, {threads} thread(s), batch {cfg.batch_size} x {model_cfg.max_seq}, AdamW, "
          f"median of {repeats} interleaved steps (reference: {len(reference)}); "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}, "
          f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}")
    for name, label in (("fused", "project's scan (fused CPU kernel)"), ("reference", "reference scan (torch ops)"),
                        ("delta", "no scan, delta's path kept"), ("floor", "no scan (y = D * x)")):
        print(f"  {label:<36}{1000 * median[name]:>8.0f} ms/step{tokens / median[name]:>10,.0f} tokens/s"
              f"{median[name] / median['floor']:>7.2f}x floor")
    print(f"training: {tokens / median['fused']:.0f} tokens/s, {median['fused'] / median['floor']:.2f}x the no-scan "
          f"floor, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
