"""Model names of the study, '<stage>/<variant>', and what they encode.

    baseline/dense                                 the trained baseline
    pruned/<criterion>-<target>-s<seed>            a pruned variant (scores and calibration drawn with <seed>);
                                                   a target pruned in k steps reads t40k3 (k = 3)
    finetuned/<criterion>-<target>-<method>-s<seed>  it, recovered by <method> (distill or plain)
    finetuned/dense-s<seed>                        the control: the baseline fine-tuned with the same budget
    int4-<stage>/<variant>                         an INT4 copy

A model's family is its name without the seed: the seeds of one family are repeats of one recipe, and the report
shows their mean and spread.
"""

from __future__ import annotations

import re

SEED = re.compile(r"-s(\d+)$")


def target_label(target, steps: int = 1) -> str:
    """0.4 -> 't40', 0.125 -> 't12p5', 'plan' -> 'plan'; in 3 steps, 0.4 -> 't40k3'."""
    if isinstance(target, str):
        return target
    percent = round(target * 100, 2)
    return f"t{percent:g}".replace(".", "p") + (f"k{steps}" if steps > 1 else "")


def pruned_variant(criterion: str, target, seed: int, steps: int = 1) -> str:
    return f"{criterion}-{target_label(target, steps)}-s{seed}"


def finetuned_variant(pruned: str, method: str) -> str:
    """The fine-tuned name of a pruned variant: its method goes before the seed."""
    base, seed = split_seed(pruned)
    return f"{base}-{method}-s{seed}"


def control_variant(seed: int) -> str:
    return f"dense-s{seed}"


def split_seed(variant: str) -> tuple[str, int | None]:
    """'taylor-t40-distill-s2' -> ('taylor-t40-distill', 2); 'dense' -> ('dense', None)."""
    match = SEED.search(variant)
    return (variant[: match.start()], int(match.group(1))) if match else (variant, None)


def describe(model_id: str) -> dict:
    """The columns a model name encodes: stage, criterion, target, method, seed, family."""
    stage, _, variant = model_id.partition("/")
    base, seed = split_seed(variant)
    parts = base.split("-")
    criterion, target, method = parts[0], "", ""
    if stage.removeprefix("int4-") == "finetuned":
        method = "plain" if criterion == "dense" else parts[-1]
    if criterion != "dense":
        target = parts[1]
    return {
        "stage": "int4" if stage.startswith("int4") else stage,
        "criterion": criterion,
        "target": target,
        "method": method,
        "seed": seed,
        "family": f"{stage}/{base}",
    }
