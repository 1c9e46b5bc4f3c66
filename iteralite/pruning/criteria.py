"""Importance: a criterion gives each parameter element a saliency; a group's score per channel sums the saliency of
every element that channel owns. Criteria are interchangeable; the pruner never knows which one it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses import head_cross_entropy_sum
from .groups import BLOCK_KINDS, Group, skipped
from .model_groups import build_groups


@dataclass
class CalibrationStats:
    """What data-aware criteria need, gathered on calibration batches of the dense model."""

    taylor: dict[str, torch.Tensor] = field(default_factory=dict)  # sum over batches of |w * dL/dw|
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # Linear weight name -> ||X_j|| per input j
    routing: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> routing-weighted output norm per expert
    skip_loss: dict[tuple[str, int], float] = field(default_factory=dict)  # (block kind, layer) -> loss increase

    def to(self, device) -> CalibrationStats:
        """The same statistics with every tensor on `device` (calibration may run on a GPU, scoring on the CPU)."""
        move = lambda tensors: {k: v.to(device) for k, v in tensors.items()}
        return CalibrationStats(move(self.taylor), move(self.input_norms), move(self.routing), dict(self.skip_loss))


class Criterion:
    name = "base"
    needs_calibration = False

    def saliency(self, name: str, weight: torch.Tensor, stats: CalibrationStats) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, summed: torch.Tensor) -> torch.Tensor:
        return summed

    def score(self, group: Group, state: dict, stats: CalibrationStats, seed: int) -> torch.Tensor:
        scores = torch.zeros(group.size, dtype=torch.float64)
        for s in group.slices:
            sal = self.saliency(s.param, state[s.param].float(), stats).double()
            sal = sal.movedim(s.axis, 0).narrow(0, s.offset, group.size)
            scores += sal.reshape(group.size, -1).sum(1)
        for c, names in enumerate(group.channel_params):
            scores[c] += sum(self.saliency(n, state[n].float(), stats).double().sum() for n in names)
        return self.finish(scores).float()


class L1(Criterion):
    name = "l1"

    def saliency(self, name, weight, stats):
        return weight.abs()


class L2(Criterion):
    name = "l2"

    def saliency(self, name, weight, stats):
        return weight.pow(2)

    def finish(self, summed):
        return summed.sqrt()


class Taylor(Criterion):
    """First-order Taylor: the loss change if a weight were removed, |w * dL/dw|, summed over calibration batches."""

    name = "taylor"
    needs_calibration = True

    def saliency(self, name, weight, stats):
        return stats.taylor[name]


class ActivationAware(Criterion):
    """Wanda-style |W_ij| * ||X_j|| for Linear weights (X the layer's input); |w| for other tensors."""

    name = "wanda"
    needs_calibration = True

    def saliency(self, name, weight, stats):
        norms = stats.input_norms.get(name)
        return weight.abs() if norms is None else weight.abs() * norms


class Random(Criterion):
    """The control: seeded random scores, the same for the same group and seed."""

    name = "random"

    def score(self, group, state, stats, seed):
        generator = torch.Generator().manual_seed(seed + sum(map(ord, group.name)) * 7919)
        return torch.rand(group.size, generator=generator)


class Routing(Criterion):
    """Whole experts only: the routing-weighted norm of each expert's output over calibration tokens."""

    name = "routing"
    needs_calibration = True

    def score(self, group, state, stats, seed):
        if group.kind != "experts":
            raise ValueError("the routing criterion scores whole experts only")
        return stats.routing[group.layer].float()


class SkipLoss(Criterion):
    """Whole blocks only (depth): how much the calibration loss rises when the block is skipped, the residual stream
    passing the layer unchanged (after Mamba-Shedder's block removal)."""

    name = "skip_loss"
    needs_calibration = True

    def score(self, group, state, stats, seed):
        if group.kind not in BLOCK_KINDS:
            raise ValueError("the skip-loss criterion scores whole blocks only")
        if not stats.skip_loss and group.members:
            raise ValueError("blocks are scored by their skip loss: calibrate on data first (criteria.calibrate)")
        return torch.tensor([stats.skip_loss[(group.kind, layer)] for layer in group.members])


class Reachable(Criterion):
    """The vocab group only: 1 for the rows token ids reach, 0 for the others (which always go)."""

    name = "reachable"

    def score(self, group, state, stats, seed):
        return (torch.arange(group.size) < group.reachable).float()


CRITERIA = {c.name: c for c in (L1(), L2(), Taylor(), ActivationAware(), Random(), Routing(), SkipLoss(),
                                Reachable())}


def criterion_for(group: Group, criterion: str, expert_criterion: str) -> Criterion:
    """The criterion a group is scored with: unless the study runs random, whole experts use `expert_criterion` and
    whole blocks the loss their skipping causes."""
    if group.kind == "vocab":
        return CRITERIA["reachable"]
    if criterion == "random":
        return CRITERIA[criterion]
    if group.kind in BLOCK_KINDS:
        return CRITERIA["skip_loss"]
    if group.kind == "experts" and expert_criterion != "same":
        return CRITERIA[expert_criterion]
    return CRITERIA[criterion]


def calibrate(model, batches: list[torch.Tensor], aux_loss_weight: float = 0.01) -> CalibrationStats:
    """Run calibration batches through the dense model: Taylor saliency, Linear input norms, routing norms, and the
    loss increase when each block is skipped."""
    stats = CalibrationStats()
    model.eval()
    names = {module: name for name, module in model.named_modules()}
    squares: dict[str, torch.Tensor] = {}

    def record_input(module, inputs):
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
        key = names[module] + ".weight"
        squares[key] = squares.get(key, 0) + x.pow(2).sum(0)

    hooks = [m.register_forward_pre_hook(record_input) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    routed = model.routed_blocks()
    for moe in routed.values():
        moe.routing_stats = {}
    params = dict(model.named_parameters())
    stats.taylor = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            logits, balance = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            (loss + aux_loss_weight * balance).backward()
            for n, p in params.items():
                if p.grad is not None:
                    stats.taylor[n] += (p.detach() * p.grad).abs()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    stats.input_norms = {k: v.sqrt() for k, v in squares.items()}
    for i, moe in routed.items():
        stats.routing[i] = torch.tensor([moe.routing_stats.get(e, 0.0) for e in range(len(moe.experts))])
        moe.routing_stats = None
    stats.skip_loss = skip_losses(model, batches)
    return stats


@torch.no_grad()
def skip_losses(model, batches: list[torch.Tensor]) -> dict[tuple[str, int], float]:
    """(block kind, layer) -> mean next-token loss on the batches with that block skipped, minus the loss without."""

    def loss() -> float:
        total = 0.0
        for batch in batches:
            hidden, _ = model.hidden_states(batch[:, :-1])
            total += head_cross_entropy_sum(model.head, hidden.flatten(0, 1), batch[:, 1:].flatten())
        return total / sum(b[:, 1:].numel() for b in batches)

    base, increases = loss(), {}
    for i, layer in enumerate(model.layers):
        for kind, key in BLOCK_KINDS.items():
            if key in layer:
                with skipped(layer, key):
                    increases[(kind, i)] = loss() - base
    return increases


def score_groups(model, criterion: str, stats: CalibrationStats, seed: int,
                 expert_criterion: str = "routing") -> dict[str, torch.Tensor]:
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return {
        g.name: criterion_for(g, criterion, expert_criterion).score(g, state, stats, seed)
        for g in build_groups(model.cfg)
    }
