"""Pruning schedules: one shot, or the same target reached in k steps with a short recovery between them.

Step i of k prunes to the plan of i/k of the target (planned on the dense config, so the last step ends exactly where
one shot does), choosing what to keep by scores of the model as it is at that step; between steps the model
recovers for a few fine-tuning steps. Scoring and recovery are passed in, so the schedule itself needs no data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .planner import plan_counts, plan_target
from .surgery import choose_kept, prune

Scores = dict[str, torch.Tensor]


def prune_in_steps(dense: torch.nn.Module, target: float, steps: int, bounds: dict, round_to: dict, pressure: dict,
                   first_scores: Scores, rescore: Callable[[torch.nn.Module], Scores],
                   recover: Callable[[torch.nn.Module, int], torch.nn.Module]) -> torch.nn.Module:
    """The dense model pruned to `target` in `steps` steps. `first_scores` score the dense model; `rescore(model)`
    scores an intermediate one; `recover(model, step)` fine-tunes it between steps."""
    model = dense
    for step in range(1, steps + 1):
        plan = plan_target(dense.cfg, target * step / steps, bounds, round_to, pressure)
        counts = plan_counts(dense.cfg, plan["ratios"], plan["round_to"])
        scores = first_scores if step == 1 else rescore(model)
        # Group names are the dense model's (experts renumbered after removals keep their layer's uniform count);
        # a kind the planner cuts less at this step than before keeps what is left.
        current = {name: min(counts.get(name, s.numel()), s.numel()) for name, s in scores.items()}
        model = prune(model, choose_kept(scores, current))
        if step < steps:
            model = recover(model, step)
    return model
