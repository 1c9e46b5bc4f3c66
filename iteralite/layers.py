"""Layers both architectures build on: the recurrent mode, the experts' mix, the embedding, the parameter count.

Glossary as in the models: t tokens, d d_model, e experts, k top_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


def mix_experts(experts, x, gates, chosen, routing_stats: dict | None = None):  # (t, d), (t, k), (t, k) -> (t, d)
    """The experts' outputs on the tokens routed to them, weighted by their gates: gathered, or dense on the devices
    where that pays (DENSE_DISPATCH_DEVICES); routing statistics (importance scores) always take the gathered mix."""
    if x.device.type in DENSE_DISPATCH_DEVICES and routing_stats is None:
        return _dense_mix(experts, x, gates, chosen)
    return _gathered_mix(experts, x, gates, chosen, routing_stats)


def _gathered_mix(experts, x, gates, chosen, routing_stats):
    """Each expert on the tokens routed to it: the fewest FLOPs, but `nonzero` syncs with the host and the shapes
    change every step. Collects each expert's routing-weighted output norm into `routing_stats` when given."""
    out = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        token, slot = (chosen == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        weighted = gates[token, slot, None] * expert(x[token])
        out.index_add_(0, token, weighted.to(out.dtype))
        if routing_stats is not None:
            norm = weighted.detach().float().norm(dim=-1).sum().item()
            routing_stats[e] = routing_stats.get(e, 0.0) + norm
    return out


def _dense_mix(experts, x, gates, chosen):
    """Every expert on every token, weighted by the gates scattered into a (t, e) matrix that is zero where an
    expert was not chosen: e / k times the expert FLOPs, but static shapes and no host sync. Adds in the same
    expert order as the gathered mix; an expert not chosen adds an exact zero."""
    weights = torch.zeros(x.shape[0], len(experts), dtype=gates.dtype, device=x.device)
    weights.scatter_(1, chosen, gates)
    out = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        out = out + (weights[:, e, None] * expert(x)).to(out.dtype)
    return out


# Where every expert runs on every token (_dense_mix). On a GPU the gathered mix is bound by its host syncs
# and launches, and its changing shapes rule out CUDA graphs; on CPU the two cost the same per training step
# (`make bench-train` prints both), and the gathered mix does fewer FLOPs. Routing statistics (importance scores)
# always take the gathered mix.
DENSE_DISPATCH_DEVICES = {"cuda"}


def embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding without nn.Embedding's own init (the model's _init_weights sets its weights): on the meta device,
    where checkpoints are rebuilt, that init's normal_ imports torch's compiler stack, 1.5 s in every job."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class RecurrentMode:
    """The recurrent mode of both architectures: one token at a time with a conv + scan state per SSM block, and
    sampling in it. A model provides `embed(ids, positions)`, `final_norm(u)`, `head(hidden)` and `layers`."""

    def empty_cache(self, batch: int, device=None):
        return [layer["ssm"].empty_state(batch, device) if "ssm" in layer else None for layer in self.layers]

    def step(self, token, position: int, cache):  # token: (b,) -> logits (b, v), new cache
        """One token with the state of the tokens before it; O(1) work per token."""
        u = self.embed(token, torch.full_like(token, position))
        new_cache = []
        for layer, state in zip(self.layers, cache):
            if "ssm" in layer:
                u, state = layer["ssm"].step(u, state)
            if "moe" in layer:
                u = layer["moe"](u.unsqueeze(1))[0].squeeze(1)
            new_cache.append(state)
        return self.head(self.final_norm(u)), new_cache

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int, temperature: float = 1.0, generator=None):
        """Sample after a prompt (b, l) in step mode; returns (b, l + new) ids, never past max_seq positions."""
        cache = self.empty_cache(prompt.shape[0], prompt.device)
        tokens = list(prompt.unbind(1))
        end = min(len(tokens) + max_new_tokens, self.cfg.max_seq)
        for position, token in enumerate(tokens[:-1]):
            _, cache = self.step(token, position, cache)
        while len(tokens) < end:
            logits, cache = self.step(tokens[-1], len(tokens) - 1, cache)
            probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
            tokens.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
        return torch.stack(tokens, dim=1)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied LM head shares the embedding table)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TrainingPath:
    """A variant of an architecture's training step that `make bench-train` times (iteralite.trainbench): module
    attributes set while it runs, whether the step runs as one CUDA graph, and whether it is timed apart on CPU
    (a path whose large tensors would otherwise set the peak memory of the others)."""

    label: str
    settings: dict = field(default_factory=dict)  # (module, attribute name) -> value
    graphed: bool = False
    timed_apart: bool = False
