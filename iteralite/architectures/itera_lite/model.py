"""The Itera-Lite architecture: what the Itera-Lite repository's IteraLiteModel computes (CisnerosCodes/Itera-Lite,
MIT; models/itera_lite.py, ssm.py, moe.py), with its state-dict names, written for this package.

Read first: S4 (Gu et al., 2021, arXiv:2111.00396) for the discretised state space, Shazeer et al. (2017,
arXiv:1701.06538) for top-k experts. Each layer is an SSM block, then an MoE block on `moe_layers` or a plain
feed-forward block on the others, both residual; LayerNorms with bias; learned positions; a tied LM head.

How it differs from the selective-scan architecture (architectures/selective_scan): one step size per position,
the mean over the channels of softplus(delta_proj(x)), and one state h of d_state entries shared by all channels
(Mamba keeps a step size and a d_state state per channel); no inner norm; LayerNorms, which re-centre: pruning is
not masking for every group (docs/design.md). Dropout (training only in that code) is left out: the study trains
without it, and an imported model computes what that code computes in eval mode.

Glossary (the selective-scan model's): b batch, l length, d d_model, di d_inner, n d_state, k d_conv, e experts,
h expert hidden, v vocabulary, c chunk length.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import layers
from ...layers import RecurrentMode, TrainingPath, embedding, mix_experts
from .config import Config

# Positions per chunk of the closed-form scan: the chunk's (b, n, c, c) decay matrix costs c per token and state
# entry, the loop over chunks l / c Python steps. `python tools/itera_lite_scan_chunks.py` (batch 32 x 128, 256
# channels, state 8, one thread, forward and backward of one layer): 34 / 24 / 25 / 22 / 40 / 71 ms at c = 4 / 8 /
# 16 / 32 / 64 / 128, 8 ms of it outside the recurrence; 8-32 are level, 16 keeps the loop short at longer windows.
CHUNK = 16


def sequential_scan(x, delta, A, B, C, D, h0=None):
    """The readable truth, as the Itera-Lite code writes it: one step per position.

    x: (b, l, di), delta: (b, l), A: (n,), B: (n, di), C: (di, n), D: (di,), h0: (b, n) -> y (b, l, di), h (b, n)
        h_t = exp(delta_t A) * h_{t-1} + delta_t (B x_t),    y_t = C h_t + D * x_t
    """
    h = x.new_zeros(x.shape[0], A.shape[0]) if h0 is None else h0
    outputs = []
    for t in range(x.shape[1]):
        h, y = scan_step(x[:, t], delta[:, t], A, B, C, D, h)
        outputs.append(y)
    return torch.stack(outputs, dim=1), h


def scan_step(x, delta, A, B, C, D, h):  # x: (b, di), delta: (b,), h: (b, n) -> new h (b, n), y (b, di)
    h = torch.exp(delta[:, None] * A) * h + delta[:, None] * (x @ B.t())
    return h, h @ C.t() + D * x


def shared_state_scan(x, delta, A, B, C, D, h0=None, chunk: int = CHUNK):
    """sequential_scan in closed form per chunk: no Python loop over positions.

    With s_t the running sum of delta within a chunk, the recurrence unrolls to
        h_t = exp(A s_t) h_start + sum_{r <= t} exp(A (s_t - s_r)) delta_r (B x_r),
    a (c x c) lower-triangular matrix per state entry applied to the drive. The exponents A (s_t - s_r) are <= 0
    where they are used (delta > 0, A < 0), so nothing overflows; the others are masked before exp. At least float32
    (the decays chain over the sequence), even under bf16 autocast.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, delta, A, B, C, D = (t.to(dtype) for t in (x, delta, A, B, C, D))
    batch, length, _ = x.shape
    drive = (delta[..., None] * (x @ B.t())).transpose(1, 2)  # (b, n, l)
    h = x.new_zeros(batch, A.shape[0]) if h0 is None else h0.to(dtype)
    states = []
    for start in range(0, length, chunk):
        s = delta[:, start:start + chunk].cumsum(1)  # (b, c)
        c = s.shape[1]
        causal = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        exponent = A[None, :, None, None] * (s[:, None, :, None] - s[:, None, None, :])  # (b, n, t, r)
        weights = torch.exp(exponent.masked_fill(~causal, float("-inf")))
        carried = torch.exp(A[None, :, None] * s[:, None, :]) * h[..., None]  # (b, n, c)
        chunk_states = (weights @ drive[..., start:start + c, None]).squeeze(-1) + carried  # (b, n, c)
        states.append(chunk_states)
        h = chunk_states[..., -1]
    y = torch.cat(states, dim=-1).transpose(1, 2) @ C.t() + D * x  # (b, l, di)
    return y, h


class S4Kernel(nn.Module):
    """`layers.i.ssm.ssm`: the state space of one SSM block and its step-size projection."""

    def __init__(self, d_inner: int, d_state: int):
        super().__init__()
        self.A_log = nn.Parameter(torch.empty(d_state))
        self.B = nn.Parameter(torch.empty(d_state, d_inner))
        self.C = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.delta_proj = nn.Linear(d_inner, d_inner)
        if not self.D.is_meta:  # checkpoints are rebuilt on the meta device, where init is wasted work
            with torch.no_grad():  # as the Itera-Lite code initialises them: standard normal
                for p in (self.A_log, self.B, self.C, self.D):
                    p.normal_()

    def step_size(self, x):  # (..., di) -> (...): one step size per position, the mean over the channels
        return F.softplus(self.delta_proj(x)).mean(-1)

    def forward(self, x, h0=None):  # (b, l, di) -> (b, l, di), final state (b, n)
        return shared_state_scan(x, self.step_size(x), -torch.exp(self.A_log), self.B, self.C, self.D, h0)

    def step(self, x, h):  # (b, di), (b, n) -> (b, di), new state
        h, y = scan_step(x, self.step_size(x), -torch.exp(self.A_log), self.B, self.C, self.D, h)
        return y, h


class SSMBlock(nn.Module):
    def __init__(self, d_model: int, d_inner: int, cfg: Config):
        super().__init__()
        self.d_inner, self.d_conv = d_inner, cfg.d_conv
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)  # rows [0, di) -> x, [di, 2di) -> gate
        # Causal: Itera-Lite pads k-1 on both sides and keeps the first l outputs, which is a left pad of k-1.
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner)
        self.ssm = S4Kernel(d_inner, cfg.d_state)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, u):  # (b, l, d) -> (b, l, d)
        x, gate = self.in_proj(self.norm(u)).split(self.d_inner, dim=-1)
        x = F.pad(x.transpose(1, 2), (self.d_conv - 1, 0))  # (b, di, l + k - 1)
        x = F.silu(self.conv1d(x).transpose(1, 2))  # (b, l, di)
        y, _ = self.ssm(x)
        return u + self.out_proj(y * F.silu(gate))

    def empty_state(self, batch: int, device=None):
        """(conv window of the last k-1 inputs (b, di, k-1), the shared scan state (b, n))."""
        return (
            torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device),
            torch.zeros(batch, self.ssm.A_log.numel(), device=device),
        )

    def step(self, u, state):  # u: (b, d) -> (b, d), new state; O(1) work per token
        conv_window, h = state
        x, gate = self.in_proj(self.norm(u)).split(self.d_inner, dim=-1)
        window = torch.cat([conv_window, x.unsqueeze(-1)], dim=-1)  # (b, di, k)
        x = F.silu((window * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        y, h = self.ssm.step(x, h)
        return u + self.out_proj(y * F.silu(gate)), (window[..., 1:], h)


class Expert(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):  # (t, d) -> (t, d)
        return self.w2(F.gelu(self.w1(x)))


class Router(nn.Module):
    """`moe.layer.router`: the gate. (Itera-Lite's router also keeps `expert_counts`, a running usage statistic
    its forward never reads; this model has no such buffer.)"""

    def __init__(self, d_model: int, n_experts: int):
        super().__init__()
        self.gate = nn.Linear(d_model, n_experts, bias=False)


class MixtureOfExperts(nn.Module):
    """`moe.layer`: top-k of the router logits, a softmax over those k, no expert biases."""

    def __init__(self, d_model: int, hidden_sizes: list[int], top_k: int):
        super().__init__()
        self.top_k = top_k
        self.norm = nn.LayerNorm(d_model)
        self.router = Router(d_model, len(hidden_sizes))
        self.experts = nn.ModuleList(Expert(d_model, h) for h in hidden_sizes)
        self.routing_stats = None  # set to a dict to collect routing-weighted output norms (importance)

    @property
    def gate(self) -> nn.Linear:  # the Linear whose output rows are the experts' router logits
        return self.router.gate

    def forward(self, u):  # (b, l, d) -> (b, l, d), load-balancing loss (scalar)
        x = self.norm(u).reshape(-1, u.shape[-1])
        logits = self.router.gate(x)
        top_logits, chosen = logits.topk(self.top_k, dim=-1)
        out = mix_experts(self.experts, x, F.softmax(top_logits, dim=-1), chosen, self.routing_stats)
        return u + out.view_as(u), balance_loss(logits)


def balance_loss(logits):  # (t, e) -> the squared coefficient of variation of the mean router probabilities
    """Itera-Lite's load-balancing loss, (std / mean)^2 of the experts' mean probabilities (std with Bessel's
    correction, as torch's default). One expert has no spread: 0 (that code's std would be NaN)."""
    if logits.shape[-1] < 2:
        return logits.new_zeros(())
    mean_probs = F.softmax(logits.float(), dim=-1).mean(0)
    return (mean_probs.std() / (mean_probs.mean() + 1e-6)) ** 2


class MoELayer(nn.Module):
    """`layers.i.moe` on an MoE layer: the mixture is its child `layer`."""

    def __init__(self, d_model: int, hidden_sizes: list[int], top_k: int):
        super().__init__()
        self.layer = MixtureOfExperts(d_model, hidden_sizes, top_k)

    def forward(self, u):
        return self.layer(u)


class FeedForwardLayer(nn.Module):
    """`layers.i.moe` off moe_layers: a LayerNorm and one expert, residual; no balance loss."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ffn = Expert(d_model, hidden)

    def forward(self, u):  # (b, l, d) -> (b, l, d), 0
        return u + self.ffn(self.norm(u)), u.new_zeros(())


class Model(RecurrentMode, nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embedding = embedding(cfg.vocab_size, d)
        self.position_embedding = embedding(cfg.max_seq, d)
        self.layers = nn.ModuleList()
        for i in range(cfg.n_layers):
            blocks = {}
            if cfg.has_ssm(i):
                blocks["ssm"] = SSMBlock(d, cfg.layer_d_inner[i], cfg)
            if cfg.is_routed(i):
                blocks["moe"] = MoELayer(d, cfg.layer_expert_hidden[i], cfg.top_k_in(i))
            elif cfg.has_moe(i):
                blocks["moe"] = FeedForwardLayer(d, cfg.layer_expert_hidden[i][0])
            self.layers.append(nn.ModuleDict(blocks))
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        for module in self.modules():  # as the Itera-Lite code: N(0, 0.02) for Linears and embeddings
            if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def token_embedding(self) -> nn.Module:  # the table the LM head is tied to
        return self.embedding

    def routed_blocks(self) -> dict[int, MixtureOfExperts]:
        """Layer -> its block that routes among experts."""
        return {i: layer["moe"].layer for i, layer in enumerate(self.layers)
                if isinstance(layer["moe"] if "moe" in layer else None, MoELayer)}

    def head(self, hidden):  # tied LM head: (..., d) -> (..., v)
        return hidden @ self.embedding.weight.t()

    def forward(self, idx):  # idx: (b, l) -> logits (b, l, v), load-balancing loss (scalar)
        hidden, balance = self.hidden_states(idx)
        return self.head(hidden), balance

    def hidden_states(self, idx):  # idx: (b, l) -> final normed hidden states (b, l, d), balance loss
        """Everything but the LM head. The balance loss is the sum over the MoE layers, as that code sums it."""
        if idx.shape[1] > self.cfg.max_seq:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds model.max_seq={self.cfg.max_seq}")
        u = self.embed(idx, torch.arange(idx.shape[1], device=idx.device))
        balance = u.new_zeros(())
        for layer in self.layers:
            if "ssm" in layer:
                u = layer["ssm"](u)
            if "moe" in layer:
                u, layer_balance = layer["moe"](u)
                balance = balance + layer_balance
        return self.final_norm(u), balance

    def embed(self, idx, positions):  # (...) ids and their positions -> (..., d)
        return self.embedding(idx) + self.position_embedding(positions)

    def final_norm(self, u):
        return self.norm(u)


def training_paths(device_type: str) -> dict[str, TrainingPath]:
    """The variants of the training step `make bench-train` times, the one training takes first: the MoE dispatch
    (the scan is the closed form per chunk on every device)."""
    gathered = {(layers, "DENSE_DISPATCH_DEVICES"): set()}
    dense = {(layers, "DENSE_DISPATCH_DEVICES"): {"cpu", "cuda"}}
    if device_type == "cuda":
        return {"graphed": TrainingPath("chunked scan, dense MoE, CUDA graph", dense, True),
                "eager": TrainingPath("chunked scan, dense MoE, eager", dense)}
    return {"gathered": TrainingPath("chunked scan, gathered MoE", gathered),
            "dense_moe": TrainingPath("the same, every expert on every token", dense)}
