"""`make bench`: speed of the dense model, the default pruned model and their INT4 copies, side by side.

Speed does not depend on the weights' values, so this needs no trained model: it builds the default config,
plans the default target, prunes with random scores (which channels stay does not change the speed), quantizes,
and measures every model in one process with fixed threads (interleaved repeats, medians).

    python -m iteralite.speedcheck [config.yaml ...] [--threads T]

Config files merge key by key, as Snakemake merges them: `config/config.yaml config/selective_scan.yaml`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from . import bench, quant
from .architectures.models import build_model
from .layers import count_parameters
from .pruning import criteria, planner, surgery
from .study import merged_config, model_config, plan_for


def build_models(config: dict) -> dict:
    torch.manual_seed(config["seed"])
    dense = build_model(model_config(config)).eval()
    target = config["pruning"]["targets"][0]
    plan = plan_for(config, target)
    counts = planner.plan_counts(dense.cfg, plan["ratios"], plan["round_to"])
    # The pruned shapes come from the planner; which channels stay does not change the speed, so random scores do.
    scores = criteria.score_groups(dense, "random", criteria.CalibrationStats(), config["seed"])
    pruned = surgery.prune(dense, surgery.choose_kept(scores, counts)).eval()
    models = {"dense fp32": dense, f"pruned {target} fp32": pruned}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in list(models.items()):
            blob, _ = quant.quantize_model(model, config["quantize"]["group_size"],
                                           config["quantize"]["keep_high_precision"], "")
            path = f"{tmp}/{len(models)}.pt"
            quant.save_quantized(path, blob)
            for mode in ("kernel", "unpacked"):
                models[name.replace("fp32", f"int4 {mode}")] = quant.load_quantized(path, path_mode=mode)
    return models


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="*", default=["config/config.yaml"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    config = merged_config(args.config)
    threads = args.threads or config["benchmark"]["threads"]
    torch.set_num_threads(threads)
    models = build_models(config)
    rows = next(iter(models.values())).cfg.reachable_rows
    tokens = torch.randint(0, rows, (200_000,), generator=torch.Generator().manual_seed(0))
    settings = config["benchmark"]
    cpu = torch.device("cpu")
    speed, latency = bench.measure(bench.torch_runners(models), tokens, settings["batch_size"], 7, settings["contexts"],
                                   cpu)
    base = speed.iloc[0]
    print(f"{bench.machine(cpu)}, {threads} thread(s), batch {base['batch']}, median of 7, side by side\n")
    for tokens in (1024, 1):
        int4, fp32 = quant.matmul_seconds(tokens=tokens)
        print(f"LM head matmul, {tokens} tokens x 128 -> 8000, group 32: int4 kernel {1000 * int4:.2f} ms, "
              f"float32 {1000 * fp32:.2f} ms")
    print(f"{'model':<27}{'params':>10}{'tokens/s':>11}{'speedup':>9}{'step ms':>9}{'weights MiB':>12}")
    for (name, model), (_, row) in zip(models.items(), speed.iterrows()):
        n = getattr(model, "n_params", None) or count_parameters(model)
        print(f"{name:<27}{n:>10,}{row['tokens_per_s']:>11,.0f}{row['tokens_per_s'] / base['tokens_per_s']:>8.2f}x"
              f"{row['step_latency_ms']:>9.2f}{row['weight_mem_mb']:>12.2f}")
    table = latency.pivot(index="model", columns="context", values="latency_ms")
    table["longest / shortest"] = table[table.columns.max()] / table[table.columns.min()]
    print("\nstep latency (ms) by context length (flat: the SSM state is O(1)):")
    print(table.round(2).to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
