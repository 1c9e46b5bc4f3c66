"""The rows no token reaches, in a finished study's baseline: how many, their share of the parameters and of a
pruned variant's cut, and the test perplexity before and after removing them alone.

    python tools/unreachable_rows.py [RESULTS_DIR] [VARIANT]     (defaults: results, taylor-t40-s1)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from iteralite.checkpoint import load_checkpoint
from iteralite.layers import count_parameters
from iteralite.pruning import surgery
from iteralite.pruning.model_groups import build_groups
from iteralite.tokens import load_tokens
from iteralite.train import perplexity


def main(results: Path, variant: str) -> None:
    model, _ = load_checkpoint(results / "models/baseline/dense/model.pt")
    tokens, _ = load_tokens(results / "tokens/tokens.pt")
    test_tokens = json.loads((results / "metrics/models/baseline/dense.json").read_text())["test_tokens"]
    kept = {g.name: torch.arange(g.size) for g in build_groups(model.cfg)}
    if "vocab" not in kept:
        print(f"every one of the {model.cfg.vocab_size} rows is reachable: nothing to remove")
        return
    kept["vocab"] = torch.arange(model.cfg.reachable_rows)
    cut = surgery.prune(model, kept).eval()
    removed = count_parameters(model) - count_parameters(cut)
    stats = json.loads((results / f"models/pruned/{variant}/prune_stats.json").read_text())
    variant_removed = stats["params_before"] - stats["params_after"]
    torch.set_num_threads(1)
    before = perplexity(model.eval(), tokens["test"], test_tokens)
    after = perplexity(cut, tokens["test"], test_tokens)
    print(f"rows: {model.cfg.vocab_size}, reachable: {model.cfg.reachable_rows}; the others hold {removed:,} "
          f"parameters, {removed / count_parameters(model):.1%} of the model and {removed / variant_removed:.1%} of "
          f"{variant}'s cut ({stats['removed_fraction']:.1%} removed)")
    print(f"test perplexity ({test_tokens} tokens): {before:.4f} before, {after:.4f} with those rows removed alone")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"), sys.argv[2] if len(sys.argv) > 2 else "taylor-t40-s1")
