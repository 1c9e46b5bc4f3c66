"""The Itera-Lite architecture's ONNX graphs: iteralite.onnxgraph's builder with this architecture's blocks.

The interface is onnxgraph's (`interface`), with a scan state of (b, n) per layer: the state shared by all channels.
- LayerNorms are `LayerNormalization` nodes (weight and bias), the blocks' at eps 1e-5, the final one at norm_eps;
- the step size is a `ReduceMean` over the channels of the softplus of delta_proj;
- the sequence graph's scan is model.shared_state_scan's closed form over the whole sequence (one chunk): running
  sums s of delta (`CumSum`), the (b, n, l, l) decays exp(A (s_t - s_r)) below the diagonal (`Where` masks the
  others to -inf before `Exp`), one `MatMul` with the drive delta (B x); the step graph takes one recurrence step
  from its past state;
- MoE layers mix their experts as GraphBuilder.mixture does (no biases); feed-forward layers are two matmuls.
"""

from __future__ import annotations

import numpy as np

from ...onnxgraph import GraphBuilder
from .config import Config

BLOCK_NORM_EPS = 1e-5  # torch's LayerNorm default, which the Itera-Lite blocks use


class Builder(GraphBuilder):
    TOKEN_TABLE, POSITION_TABLE = "embedding", "position_embedding"

    def layer_norm(self, x: str, name: str, eps: float = BLOCK_NORM_EPS) -> str:
        return self.op("LayerNormalization", x, self.const(f"{name}.weight", self.array(f"{name}.weight")),
                       self.const(f"{name}.bias", self.array(f"{name}.bias")), axis=-1, epsilon=eps)

    def ssm_block(self, u: str, i: int, cfg: Config, conv_state: str, ssm_state: str, outputs: list[str]):
        """model.SSMBlock on (b, l, d) (l = 1 in the step graph), from the given states ('' = zeros); writes the new
        states to `outputs` (conv, ssm) and returns the block's output."""
        p, di = f"layers.{i}.ssm", cfg.layer_d_inner[i]
        x, gate = self.op("Split", self.linear(self.layer_norm(u, f"{p}.norm"), f"{p}.in_proj"),
                          self.ints(f"{p}.split", [di, di]), outputs=2, axis=-1)
        x = self.causal_conv(x, f"{p}.conv1d", conv_state, outputs[0])
        delta = self.op("ReduceMean", self.softplus(self.linear(x, f"{p}.ssm.delta_proj", bias=True)),
                        self.ints("last", [-1]), keepdims=1)  # (b, l, 1)
        A = -np.exp(self.array(f"{p}.ssm.A_log"))
        drive = self.op("Mul", delta, self.op("MatMul", x, self.const(f"{p}.ssm.B_t", self.array(f"{p}.ssm.B").T)))
        if self.graph == "step":  # h = exp(delta A) h_past + delta (B x), at l = 1
            past = self.op("Unsqueeze", ssm_state, self.ints("one", [1]))  # (b, 1, n)
            decay = self.op("Exp", self.op("Mul", delta, self.const(f"{p}.ssm.A", A)))
            states = self.op("Add", self.op("Mul", decay, past), drive)  # (b, 1, n)
            self.op("Squeeze", states, self.ints("one", [1]), outputs=[outputs[1]])
        else:
            states = self.closed_form_scan(delta, drive, A, p)  # (b, l, n)
            self.op("Gather", states, self.const("last_index", np.int64(-1)), axis=1, outputs=[outputs[1]])
        y = self.op("Add", self.op("MatMul", states, self.const(f"{p}.ssm.C_t", self.array(f"{p}.ssm.C").T)),
                    self.op("Mul", x, self.const(f"{p}.ssm.D", self.array(f"{p}.ssm.D"))))
        gated = self.op("Mul", y, self.op("Mul", gate, self.op("Sigmoid", gate)))
        return self.op("Add", u, self.linear(gated, f"{p}.out_proj"))

    def closed_form_scan(self, delta: str, drive: str, A: np.ndarray, p: str) -> str:
        """The states h_t (b, l, n) of every position from zeros: sum_{r <= t} exp(A (s_t - s_r)) drive_r."""
        s = self.op("CumSum", delta, self.const("axis_one", np.int64(1)))  # (b, l, 1)
        diff = self.op("Sub", s, self.op("Transpose", s, perm=[0, 2, 1]))  # (b, t, r): s_t - s_r
        exponent = self.op("Mul", self.op("Unsqueeze", diff, self.ints("one", [1])),
                           self.const(f"{p}.ssm.A_col", A.reshape(1, -1, 1, 1)))  # (b, n, t, r)
        length = self.op("Gather", self.op("Shape", delta), self.const("one_index", np.int64(1)))
        positions = self.op("Range", self.const("zero_i", np.int64(0)), length, self.const("one_i", np.int64(1)))
        causal = self.op("LessOrEqual", self.op("Unsqueeze", positions, self.ints("zero", [0])),
                         self.op("Unsqueeze", positions, self.ints("one", [1])))  # (t, r): r <= t
        weights = self.op("Exp", self.op("Where", causal, exponent, self.const("minus_inf", np.float32(-np.inf))))
        drive_by_state = self.op("Unsqueeze", self.op("Transpose", drive, perm=[0, 2, 1]), self.ints("last", [-1]))
        states = self.op("Squeeze", self.op("MatMul", weights, drive_by_state), self.ints("last", [-1]))
        return self.op("Transpose", states, perm=[0, 2, 1])

    def moe_block(self, u: str, i: int, cfg: Config) -> str:
        """model.MoELayer (the mixture, no biases) or model.FeedForwardLayer."""
        if not cfg.is_routed(i):
            p = f"layers.{i}.moe"
            hidden = self.op("Gelu", self.linear(self.layer_norm(u, f"{p}.norm"), f"{p}.ffn.w1"), approximate="none")
            return self.op("Add", u, self.linear(hidden, f"{p}.ffn.w2"))
        p = f"layers.{i}.moe.layer"
        x = self.layer_norm(u, f"{p}.norm")
        return self.op("Add", u, self.mixture(x, p, self.linear(x, f"{p}.router.gate"), cfg.top_k_in(i),
                                              cfg.layer_expert_hidden[i], biases=False))

    def final_norm(self, u: str, cfg: Config) -> str:
        return self.layer_norm(u, "norm", cfg.norm_eps)
