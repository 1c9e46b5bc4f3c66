"""The selective-scan IteraLite: a tiny language model of Mamba-style selective state-space (SSM) blocks and top-2
mixture-of-experts (MoE) blocks.

Read first: Mamba (Gu & Dao, 2023, arXiv:2312.00752) for the selective scan, Switch Transformer (Fedus et al., 2021,
arXiv:2101.03961) for the load-balancing loss. Each layer is an SSM block followed by an MoE block, both residual.

Glossary of dimension letters used in the shape notes:
    b   batch size
    l   sequence length
    d   d_model (residual stream width)
    di  d_inner (SSM channels of one layer)
    n   d_state (SSM state size per channel; never pruned)
    k   d_conv (causal depthwise convolution width)
    e   number of experts in a layer
    h   hidden size of one expert
    v   vocabulary size

Sizes may differ per layer and per expert, because structured pruning removes channels from each one separately;
a pruned model is an ordinary Model with a smaller config. Depth pruning removes whole blocks: a layer whose
d_inner is 0 has no SSM block, one with no experts has no MoE block, and the residual stream passes through.

Norms are RMSNorms whose mean square divides by a fixed width: the unpruned width (`norm_ref_*` in the config).
A channel that is removed therefore changes nothing for the channels that stay: the pruned model computes exactly
what the dense model computes with those channels masked to zero. (A LayerNorm would re-centre and re-scale the
survivors.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import layers
from ...layers import RecurrentMode, TrainingPath, embedding, mix_experts
from . import scan
from .config import Config
from .scan import selective_scan


class RMSNorm(nn.Module):
    """RMSNorm dividing the sum of squares by a fixed width, the unpruned one (see module docstring)."""

    def __init__(self, width: int, ref_width: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.ref_width = ref_width
        self.eps = eps

    def forward(self, x):  # (..., width) -> (..., width)
        mean_square = x.pow(2).sum(-1, keepdim=True) / self.ref_width
        return x * torch.rsqrt(mean_square + self.eps) * self.weight


class SSMBlock(nn.Module):
    def __init__(self, d_model: int, d_inner: int, cfg: Config):
        super().__init__()
        self.d_inner, self.d_conv = d_inner, cfg.d_conv
        self.norm = RMSNorm(d_model, cfg.norm_ref_d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # rows [0, di) -> x, [di, 2di) -> z
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner)  # causal: left pad in forward
        self.delta_proj = nn.Linear(d_inner, d_inner)
        self.A_log = nn.Parameter(torch.empty(cfg.d_state))
        self.B = nn.Parameter(torch.empty(cfg.d_state, d_inner))
        self.C = nn.Parameter(torch.empty(d_inner, cfg.d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        if not self.D.is_meta:  # on the meta device (checkpoints being rebuilt) the init would import torch's compiler
            self._init_state_space()
        self.inner_norm = RMSNorm(d_inner, cfg.norm_ref_d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    @torch.no_grad()
    def _init_state_space(self):  # S4D-real: A = -(1, 2, ..., d_state)
        d_state = self.A_log.shape[0]
        self.A_log.copy_(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)))
        self.B.copy_(torch.randn(self.B.shape) / math.sqrt(d_state))
        self.C.copy_(torch.randn(self.C.shape) / math.sqrt(d_state))
        self.D.fill_(1.0)

    def forward(self, u):  # (b, l, d) -> (b, l, d)
        x, z = self.in_proj(self.norm(u)).split(self.d_inner, dim=-1)
        x = F.pad(x.transpose(1, 2), (self.d_conv - 1, 0))  # causal padding, (b, di, l + k - 1)
        x = F.silu(self.conv1d(x).transpose(1, 2))  # (b, l, di)
        delta = F.softplus(self.delta_proj(x))
        y = selective_scan(x, delta, -torch.exp(self.A_log), self.B, self.C, self.D)
        return u + self.out_proj(self.inner_norm(y) * F.silu(z))

    def empty_state(self, batch: int, device=None):
        """(conv window of the last k-1 inputs (b, di, k-1), scan state (b, di, n))."""
        return (
            torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device),
            torch.zeros(batch, self.d_inner, self.A_log.numel(), device=device),
        )

    def step(self, u, state):  # u: (b, d) -> (b, d), new state; O(1) work per token
        conv_window, h = state
        x, z = self.in_proj(self.norm(u)).split(self.d_inner, dim=-1)
        window = torch.cat([conv_window, x.unsqueeze(-1)], dim=-1)  # (b, di, k)
        x = F.silu((window * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        delta = F.softplus(self.delta_proj(x))
        h = torch.exp(delta.unsqueeze(-1) * -torch.exp(self.A_log)) * h + (delta * x).unsqueeze(-1) * self.B.t()
        y = (h * self.C).sum(-1) + self.D * x
        return u + self.out_proj(self.inner_norm(y) * F.silu(z)), (window[..., 1:], h)


class Expert(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden)
        self.w2 = nn.Linear(hidden, d_model)

    def forward(self, x):  # (tokens, d) -> (tokens, d)
        return self.w2(F.gelu(self.w1(x)))


class MoEBlock(nn.Module):
    """Top-k routing: each token goes to its k best experts, weighted by a softmax over those k router logits."""

    def __init__(self, d_model: int, hidden_sizes: list[int], top_k: int, cfg: Config):
        super().__init__()
        self.top_k = top_k
        self.norm = RMSNorm(d_model, cfg.norm_ref_d_model)
        self.router = nn.Linear(d_model, len(hidden_sizes), bias=False)
        self.experts = nn.ModuleList(Expert(d_model, h) for h in hidden_sizes)
        self.routing_stats = None  # set to a dict to collect routing-weighted output norms (importance)

    def route(self, x):  # x: (t, d) -> gates (t, k) summing to 1, chosen experts (t, k), router probs (t, e)
        logits = self.router(x)
        top_logits, chosen = logits.topk(self.top_k, dim=-1)
        return F.softmax(top_logits, dim=-1), chosen, F.softmax(logits, dim=-1)

    @property
    def gate(self) -> nn.Linear:  # the Linear whose output rows are the experts' router logits
        return self.router

    def forward(self, u):  # (b, l, d) -> (b, l, d), load-balancing loss (scalar)
        x = self.norm(u).reshape(-1, u.shape[-1])
        gates, chosen, probs = self.route(x)
        out = mix_experts(self.experts, x, gates, chosen, self.routing_stats)
        # Switch-style balance: e * sum_e (fraction of routed slots to e) * (mean router probability of e)
        n_experts = len(self.experts)
        routed = F.one_hot(chosen, n_experts).float().sum(dim=(0, 1)) / chosen.numel()
        balance = n_experts * (routed * probs.float().mean(0)).sum()
        return u + out.view_as(u), balance


class Model(RecurrentMode, nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = embedding(cfg.vocab_size, d)
        self.pos_emb = embedding(cfg.max_seq, d)
        self.layers = nn.ModuleList()
        for i in range(cfg.n_layers):
            blocks = {}
            if cfg.has_ssm(i):
                blocks["ssm"] = SSMBlock(d, cfg.layer_d_inner[i], cfg)
            if cfg.has_moe(i):
                blocks["moe"] = MoEBlock(d, cfg.layer_expert_hidden[i], cfg.top_k_in(i), cfg)
            self.layers.append(nn.ModuleDict(blocks))
        self.norm_f = RMSNorm(d, cfg.norm_ref_d_model)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def token_embedding(self) -> nn.Module:  # the table the LM head is tied to
        return self.tok_emb

    def routed_blocks(self) -> dict[int, MoEBlock]:
        """Layer -> its block that routes among experts."""
        return {i: layer["moe"] for i, layer in enumerate(self.layers) if "moe" in layer}

    def head(self, hidden):  # tied LM head: (..., d) -> (..., v)
        return hidden @ self.tok_emb.weight.t()

    def forward(self, idx):  # idx: (b, l) token ids -> logits (b, l, v), load-balancing loss (scalar)
        hidden, balance = self.hidden_states(idx)
        return self.head(hidden), balance

    def hidden_states(self, idx):  # idx: (b, l) -> final normed hidden states (b, l, d), load-balancing loss
        """Everything but the LM head, so that training and evaluation can run the head in chunks (losses.py)."""
        if idx.shape[1] > self.cfg.max_seq:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds model.max_seq={self.cfg.max_seq}")
        u = self.embed(idx, torch.arange(idx.shape[1], device=idx.device))
        balance, moe_blocks = u.new_zeros(()), 0
        for layer in self.layers:
            if "ssm" in layer:
                u = layer["ssm"](u)
            if "moe" in layer:
                u, layer_balance = layer["moe"](u)
                balance, moe_blocks = balance + layer_balance, moe_blocks + 1
        return self.final_norm(u), balance / max(1, moe_blocks)

    def embed(self, idx, positions):  # (...) ids and their positions -> (..., d)
        return self.tok_emb(idx) + self.pos_emb(positions)

    def final_norm(self, u):
        return self.norm_f(u)


def training_paths(device_type: str) -> dict[str, TrainingPath]:
    """The variants of the training step `make bench-train` times: the one training takes first, "floor" the step
    with the scan replaced by y = D * x (what a step costs without any scan)."""

    def path(label: str, implementation: str, dense_moe: bool, graphed: bool = False) -> TrainingPath:
        dispatch = {"cpu", "cuda"} if dense_moe else set()
        return TrainingPath(label, {(scan, "IMPLEMENTATION"): implementation,
                                    (layers, "DENSE_DISPATCH_DEVICES"): dispatch}, graphed,
                            timed_apart=device_type == "cpu" and implementation == "reference")

    if device_type == "cuda":
        return {"graphed": path("Triton scan, dense MoE, CUDA graph", "auto", True, True),
                "eager": path("Triton scan, dense MoE, eager", "auto", True),
                "reference": path("reference scan (torch ops), eager", "reference", False),
                "floor": path("no scan (y = D * x)", "none", True, True)}
    return {"fused": path("fused scan (numba kernel)", "auto", False),
            "dense_moe": path("the same, every expert on every token", "auto", True),
            "reference": path("reference scan (torch ops), eager", "reference", False),
            "delta": path("no scan, delta's path kept", "delta", False),
            "floor": path("no scan (y = D * x)", "none", False)}
