"""Side experiment: recovery recipes on one pruned model of a finished study, outside the workflow.

Each recipe is a JSON object of `finetune` keys that override the study's recipe (e.g. {"max_steps": 150,
"distill_weight": 1.0, "lr": 2e-3}); distill_weight > 0 distils from the study's baseline. A recipe may name
"source" (default pruned/taylor-t40-s1), e.g. "baseline/dense" for a control. Prints test perplexity, its change
against the baseline, and the wall time of each run (2 threads).

Usage: python tools/recovery_recipes.py '{"max_steps": 100, "distill_weight": 1.0, "lr": 0.002}' ...
"""

from __future__ import annotations

import json
import sys
import time

import torch
import yaml

from iteralite import workflow
from iteralite.checkpoint import load_checkpoint
from iteralite.tokens import load_tokens
from iteralite.train import TrainConfig, perplexity, train


def main(recipes: list[dict]) -> None:
    workflow.bound_native_caches()
    torch.set_num_threads(2)
    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    tokens, _ = load_tokens("results/tokens/tokens.pt")
    budget = config["evaluate"]["test_tokens"]
    teacher = load_checkpoint("results/models/baseline/dense/model.pt")[0].eval()
    base_ppl = perplexity(teacher, tokens["test"], budget)
    for recipe in recipes:
        source = recipe.pop("source", "pruned/taylor-t40-s1")
        model = load_checkpoint(f"results/models/{source}/model.pt")[0]
        settings = TrainConfig.from_dict({**config["finetune"], "distill_weight": 0.0, "seed": config["seeds"][0],
                                          **recipe})
        start = time.perf_counter()
        tuned, _ = train(model, tokens["train"], tokens["validation"], settings, None,
                         teacher if settings.distill_weight > 0 else None, torch.device("cpu"))
        ppl = perplexity(tuned.eval(), tokens["test"], budget)
        print(f"{source} {json.dumps(recipe)}: test perplexity {ppl:.2f} ({ppl / base_ppl - 1:+.1%} vs the "
              f"baseline's {base_ppl:.2f}), {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main([json.loads(arg) for arg in sys.argv[1:]])
