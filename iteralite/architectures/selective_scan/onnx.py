"""The selective-scan architecture's ONNX graphs: iteralite.onnxgraph's builder with this architecture's blocks.

- the selective scan is one `com.microsoft.LinearAttention` node (update_rule "gated") per layer: one head per
  channel with d_k = n and d_v = 1, query C[c, :] and key B[:, c] (constant over time), value delta * x, decay
  delta * A, scale 1; S_t = exp(g_t) S_{t-1} + k_t v_t and o_t = q_t^T S_t is the scan's h_t and C h_t;
- the causal depthwise conv with its SiLU is one `com.microsoft.CausalConvWithState` node (GraphBuilder.causal_conv);
- RMSNorms are `RMSNormalization` nodes, scaled to divide by the unpruned width;
- the MoE block is GraphBuilder.mixture, with the experts' biases.
"""

from __future__ import annotations

import numpy as np

from ...onnxgraph import GraphBuilder
from .config import Config

RMS_EPS = 1e-5  # model.RMSNorm's


class Builder(GraphBuilder):
    TOKEN_TABLE, POSITION_TABLE = "tok_emb", "pos_emb"  # the embeddings' state-dict names

    def rms_norm(self, x: str, name: str, ref_width: int) -> str:
        """model.RMSNorm: x * rsqrt(sum(x^2) / ref + eps) * w, as the fused RMSNormalization (opset 23)
        (which divides by the actual width, r * ref): rsqrt(r * mean + eps) = rsqrt(mean + eps / r) / sqrt(r)."""
        weight = self.array(f"{name}.weight")
        ratio = weight.shape[0] / ref_width
        scale = self.const(f"{name}.weight", weight / np.sqrt(np.float32(ratio)))
        return self.op("RMSNormalization", x, scale, axis=-1, epsilon=RMS_EPS / ratio)

    def ssm_block(self, u: str, i: int, cfg: Config, conv_state: str, ssm_state: str, outputs: list[str]):
        """model.SSMBlock on (b, l, d) (l = 1 in the step graph), from the given states ('' = zeros); writes the new
        states to `outputs` (conv, ssm) and returns the block's output."""
        p, di, n = f"layers.{i}.ssm", cfg.layer_d_inner[i], cfg.d_state
        x, z = self.op("Split", self.linear(self.rms_norm(u, f"{p}.norm", cfg.norm_ref_d_model), f"{p}.in_proj"),
                       self.ints(f"{p}.split", [di, di]), outputs=2, axis=-1)
        x = self.causal_conv(x, f"{p}.conv1d", conv_state, outputs[0])
        delta = self.softplus(self.linear(x, f"{p}.delta_proj", bias=True))  # (b, l, di)
        lead = self.op("Slice", self.op("Shape", x), self.ints("zero", [0]), self.ints("two", [2]))
        per_state = self.op("Concat", lead, self.ints(f"{p}.di_n", [di * n]), axis=0)  # (b, l, di * n)
        A = -np.exp(self.array(f"{p}.A_log"))
        decay = self.op("Reshape", self.op("Mul", self.op("Unsqueeze", delta, self.ints("last", [-1])),
                                           self.const(f"{p}.A", A)), per_state)
        query = self.op("Expand", self.const(f"{p}.C_flat", self.array(f"{p}.C").reshape(1, 1, di * n)), per_state)
        key = self.op("Expand", self.const(f"{p}.B_flat", self.array(f"{p}.B").T.reshape(1, 1, di * n)), per_state)
        past_ssm = self.op("Unsqueeze", ssm_state, self.ints("last", [-1])) if ssm_state else ""  # (b, di, n, 1)
        scanned, present_ssm = self.op("LinearAttention", query, key, self.op("Mul", delta, x), past_ssm, decay,
                                       outputs=2, domain="com.microsoft", q_num_heads=di, kv_num_heads=di,
                                       scale=1.0, update_rule="gated")
        self.op("Squeeze", present_ssm, self.ints("last", [-1]), outputs=[outputs[1]])
        y = self.op("Add", scanned, self.op("Mul", x, self.const(f"{p}.D", self.array(f"{p}.D"))))
        gated = self.op("Mul", self.rms_norm(y, f"{p}.inner_norm", cfg.norm_ref_d_inner),
                        self.op("Mul", z, self.op("Sigmoid", z)))
        return self.op("Add", u, self.linear(gated, f"{p}.out_proj"))

    def moe_block(self, u: str, i: int, cfg: Config) -> str:
        """model.MoEBlock with the dense mix: every expert on every token, weighted by the scattered top-k gates.
        The experts run as two matmuls: their w1 stacked by rows, w2 joined by columns, each expert's hidden
        channels weighted by its gate in between (sum_e g_e w2_e(h_e) = w2(g h)), and the w2 biases as gates @ b2;
        a graph of a few nodes per block instead of six per expert, where at one token a node costs its dispatch."""
        p = f"layers.{i}.moe"
        x = self.rms_norm(u, f"{p}.norm", cfg.norm_ref_d_model)
        return self.op("Add", u, self.mixture(x, p, self.linear(x, f"{p}.router"), cfg.top_k_in(i),
                                              cfg.layer_expert_hidden[i], biases=True))

    def final_norm(self, u: str, cfg: Config) -> str:
        return self.rms_norm(u, "norm_f", cfg.norm_ref_d_model)


