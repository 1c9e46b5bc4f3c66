"""Side experiment: the same parameter target allocated in different ways, after the default study has run.

For each allocation (the study's: SSM channels cut deeper by pressure; an even cut of every kind; MoE blocks allowed;
SSM blocks allowed), prunes the study's baseline by Taylor importance, measures test perplexity before and after a
distilled fine-tune of the default recipe (2 threads), and the pruned model's batched throughput against the
baseline's, side by side in one process, with the study's benchmark threads and batch (15 interleaved repeats).

Usage: python tools/allocations.py [fine-tune steps] [target]   (after `make run`; defaults 100 and 0.4)
"""

from __future__ import annotations

import copy
import sys

import torch
import yaml

from iteralite import bench, workflow
from iteralite.checkpoint import load_checkpoint
from iteralite.pruning import criteria, planner, surgery
from iteralite.tokens import TokenWindows, load_tokens
from iteralite.train import TrainConfig, perplexity, train

ALLOCATIONS = {  # label -> (bounds, pressure), each over the study's
    "the study's pressure": ({}, {}),
    "even pressure (1 for every kind)": ({}, {k: 1.0 for k in planner.KINDS}),
    "MoE blocks may go (bound 0.25)": ({"moe_blocks": 0.25}, {}),
    "SSM and MoE blocks may go (0.25)": ({"ssm_blocks": 0.25, "moe_blocks": 0.25}, {}),
}


def main(steps: int, target: float) -> None:
    workflow.bound_native_caches()
    torch.set_num_threads(2)
    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    pruning, seed = config["pruning"], config["seeds"][0]
    tokens, _ = load_tokens("results/tokens/tokens.pt")
    dense = load_checkpoint("results/models/baseline/dense/model.pt")[0].eval()
    windows = TokenWindows(tokens["train"], dense.cfg.max_seq, config["train"]["batch_size"], seed)
    stats = criteria.calibrate(copy.deepcopy(dense), [windows.next() for _ in range(pruning["calibration_batches"])])
    scores = criteria.score_groups(dense, "taylor", stats, seed, pruning["expert_criterion"])
    skips = stats.skip_loss.items()
    print("skip loss per block:", ", ".join(f"{kind[:3]}{layer} {v:.3f}" for (kind, layer), v in skips))
    base_ppl = perplexity(dense, tokens["test"], config["evaluate"]["test_tokens"])
    recipe = TrainConfig.from_dict({**config["finetune"], "max_steps": steps, "seed": seed})
    for label, (bounds, pressure) in ALLOCATIONS.items():
        plan = planner.plan_target(dense.cfg, target, {**pruning["bounds"], **bounds}, pruning["round_to"],
                                   {**pruning["pressure"], **pressure})
        counts = planner.plan_counts(dense.cfg, plan["ratios"], plan["round_to"])
        pruned = surgery.prune(dense, surgery.choose_kept(scores, counts)).eval()
        before = perplexity(pruned, tokens["test"], config["evaluate"]["test_tokens"])
        torch.set_num_threads(config["benchmark"]["threads"])  # throughput as the study's benchmark measures it
        speed, _ = bench.measure(bench.torch_runners({"dense": dense, "pruned": pruned}), tokens["test"],
                                 config["benchmark"]["batch_size"], 15, [16], torch.device("cpu"))
        torch.set_num_threads(2)
        per_s = speed.set_index("model")["tokens_per_s"]
        tuned, _ = train(pruned.train(), tokens["train"], tokens["validation"], recipe, None, dense,
                         torch.device("cpu"))
        after = perplexity(tuned.eval(), tokens["test"], config["evaluate"]["test_tokens"])
        cut = ", ".join(f"{kind} {ratio:.1%}" for kind, ratio in plan["ratios"].items() if ratio)
        print(f"{label}: {plan['removed_fraction']:.1%} removed ({cut}), blocks kept {counts['ssm_blocks']} SSM "
              f"{counts['moe_blocks']} MoE; test ppl {before:.1f} pruned, {after:.2f} fine-tuned "
              f"({after / base_ppl - 1:+.1%} vs the baseline's {base_ppl:.2f}); throughput "
              f"{per_s['pruned'] / per_s['dense']:.2f}x the baseline's")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100, float(sys.argv[2]) if len(sys.argv) > 2 else 0.4)
