"""A model as two ONNX graphs, built node by node from its own tensors, for ONNX Runtime: the graph builder every
architecture's onnx.py extends with its blocks.

The graphs' interface, declared once (`interface`), as in Hugging Face Optimum's exporters; dimension letters as in
the models (b batch, l length, di SSM channels of layer i, k d_conv, s the layer's scan state: (di, n) or (n,), as
its config's `scan_state_shape` says, v vocabulary):

    sequence (model.onnx): ids (b, l) int64
                           -> logits (b, l, v), present_conv.{i} (b, di, k-1), present_ssm.{i} (b, s)
    step (step.onnx):      ids (b,) int64, position (b,) int64, past_conv.{i}, past_ssm.{i}
                           -> logits (b, v), present_conv.{i}, present_ssm.{i}

A prompt is prefilled by one call of the sequence graph; generation then calls the step graph once per token with
the state it returned. i runs over the layers that have an SSM block; the state is the torch model's cache
(`empty_cache`), in the same layout. Both graphs compute what the model's forward and step compute. Shared here:
- the causal depthwise conv with its SiLU is one `com.microsoft.CausalConvWithState` node, which also returns the
  last k-1 inputs (the conv state);
- the MoE block runs every expert on every token, weighted by the top-k gates scattered into a (b, l, e) matrix
  (layers._dense_mix): static shapes, the experts' w1 stacked and their w2 joined into two matmuls;
- an INT4 model keeps its 4-bit weights: every Linear and the tied LM head are `com.microsoft.MatMulNBits`, the
  embeddings `com.microsoft.GatherBlockQuantized`, on the package's own nibbles, scales and zero points
  (quant.py's layout, w = (q - zero_point) * scale). The tied table's nibbles are one initializer that the head
  and the gather share; joined expert weights keep their values (a group split into smaller blocks repeats its
  scale and zero point). A layer whose quantization group is under 16 (the kernels' smallest block) is a float32
  MatMul of its dequantized weight, the same values.

This module needs onnx and numpy only; iteralite.export feeds it a model's tensors and verifies the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .modelconfig import LayerSizes as ModelConfig

OPSET = 23  # RMSNormalization (23); ONNX Runtime 1.31 runs it
IR_VERSION = 10  # onnx writes a newer IR than ONNX Runtime 1.31 reads (13 at most)
FORMAT = "iteralite-onnx-v1"  # metadata_props["iteralite.format"] of every graph this module writes
MIN_BLOCK = 16  # MatMulNBits and GatherBlockQuantized take blocks of 16 and more


@dataclass
class Int4Weight:
    """A weight (N, K) in quant.py's layout: nibbles (N, K/2) uint8 (even column in the low nibble), scale and
    zero_point (N, K/group_size), w = (q - zero_point) * scale."""

    nibbles: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.nibbles.shape[0], self.scale.shape[1] * self.group_size

    def dequantize(self) -> np.ndarray:
        q = np.stack([self.nibbles & 0x0F, self.nibbles >> 4], axis=-1).reshape(self.nibbles.shape[0], -1)
        n, k = self.shape
        groups = q[:, :k].reshape(n, -1, self.group_size).astype(np.float32) - self.zero_point[..., None]
        return (groups * self.scale.astype(np.float32)[..., None]).reshape(n, k)

    @property
    def kernel_fits(self) -> bool:
        return self.group_size >= MIN_BLOCK

    def reblocked(self, group_size: int) -> Int4Weight:
        """The same values in groups of `group_size` (a divisor of this one's): each group's scale and zero point
        repeated for its sub-groups."""
        repeat = self.group_size // group_size
        return Int4Weight(self.nibbles, np.repeat(self.scale, repeat, axis=1),
                          np.repeat(self.zero_point, repeat, axis=1), group_size)


def concatenated(weights: list[Weight], axis: int) -> Weight:
    """Weights (N_j, K_j) joined along rows (axis 0, the same K) or columns (axis 1, the same N), the same values;
    4-bit ones in their smallest group size (every K_j is a multiple of it, so no group straddles two)."""
    if not all(isinstance(w, Int4Weight) for w in weights):
        return np.concatenate([w.dequantize() if isinstance(w, Int4Weight) else w for w in weights], axis=axis)
    group = min(w.group_size for w in weights)
    parts = [w.reblocked(group) for w in weights]
    return Int4Weight(*(np.concatenate([getattr(w, f) for w in parts], axis=axis)
                        for f in ("nibbles", "scale", "zero_point")), group)


Weight = np.ndarray | Int4Weight  # a float32 array or a 4-bit one


def ssm_layers(cfg: ModelConfig) -> list[int]:
    """The layers that carry recurrent state (those with an SSM block)."""
    return [i for i in range(cfg.n_layers) if cfg.has_ssm(i)]


def interface(cfg: ModelConfig) -> dict:
    """Names and shapes of both graphs' inputs and outputs ('b' and 'l' are dynamic)."""
    k = cfg.d_conv - 1
    past, present = {}, {}
    for i in ssm_layers(cfg):
        di = cfg.layer_d_inner[i]
        scan_state = cfg.scan_state_shape(i)
        past |= {f"past_conv.{i}": ["b", di, k], f"past_ssm.{i}": ["b", *scan_state]}
        present |= {f"present_conv.{i}": ["b", di, k], f"present_ssm.{i}": ["b", *scan_state]}
    v = cfg.vocab_size
    return {
        "sequence": {"inputs": {"ids": ["b", "l"]}, "outputs": {"logits": ["b", "l", v], **present}},
        "step": {"inputs": {"ids": ["b"], "position": ["b"], **past}, "outputs": {"logits": ["b", v], **present}},
    }


def _packed_pairs(values: np.ndarray) -> np.ndarray:
    """(N, G) uint8 in [0, 15] -> (N, ceil(G/2)) uint8, even columns in the low nibble."""
    if values.shape[1] % 2:
        values = np.pad(values, ((0, 0), (0, 1)))
    return (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)


class GraphBuilder:
    """Nodes and initializers of one graph; every method returns the name of the value it made. Each architecture's
    onnx.py subclasses it with its blocks (`ssm_block`, `moe_block`, `final_norm`) and the names of its embedding
    tables."""

    TOKEN_TABLE: str  # the embeddings' state-dict names
    POSITION_TABLE: str

    def __init__(self, tensors: dict[str, Weight], graph: str, accuracy_level: int):
        self.tensors, self.graph = tensors, graph
        self.accuracy_level = accuracy_level
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.float_layers: list[str] = []  # 4-bit layers whose group is under MIN_BLOCK (see module docstring)
        self._count = 0

    def const(self, name: str, array) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.array(array), name)  # a copy, 0-d kept
        return name

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, domain: str = "", **attrs):
        if isinstance(outputs, int):
            names = [f"{op_type.lower()}_{self._count}_{j}" for j in range(outputs)]
        else:
            names = outputs
        self._count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name], dtype=np.float32)

    # -- layers -------------------------------------------------------------------------------------------------

    def linear(self, x: str, name: str, bias: bool = False) -> str:
        """y = x W^T (+ b) for the weight `name`.weight (N, K) and its bias `name`.bias."""
        bias_value = self.array(f"{name}.bias") if bias else None
        return self.matmul(x, name, self.tensors[f"{name}.weight"], bias_value)

    def matmul(self, x: str, name: str, weight: Weight, bias: np.ndarray | None = None) -> str:
        """y = x W^T (+ b): MatMulNBits on a 4-bit weight, MatMul otherwise; `name` names its initializers."""
        bias_name = self.const(f"{name}.bias", bias) if bias is not None else ""
        if isinstance(weight, Int4Weight) and weight.kernel_fits:
            return self.matmul_nbits(x, name, weight, bias_name)
        if isinstance(weight, Int4Weight):
            self.float_layers.append(name)
            weight = weight.dequantize()
        y = self.op("MatMul", x, self.const(f"{name}.weight_t", np.asarray(weight, np.float32).T))
        return self.op("Add", y, bias_name) if bias_name else y

    def matmul_nbits(self, x: str, name: str, weight: Int4Weight, bias_name: str = "") -> str:
        n, k = weight.shape
        blocks = k // weight.group_size
        nibbles = self.const(f"{name}.nibbles", weight.nibbles.reshape(n, blocks, weight.group_size // 2))
        scale = self.const(f"{name}.scale", weight.scale.astype(np.float32))
        zero_point = self.const(f"{name}.zero_point", _packed_pairs(weight.zero_point))
        inputs = [x, nibbles, scale, zero_point] + (["", bias_name] if bias_name else [])
        return self.op("MatMulNBits", *inputs, domain="com.microsoft", K=k, N=n, bits=4,
                       block_size=weight.group_size, accuracy_level=self.accuracy_level)

    def embedding(self, ids: str, name: str) -> str:
        """Rows of the table `name`.weight for ids of any shape -> (..., d)."""
        weight = self.tensors[f"{name}.weight"]
        if not isinstance(weight, Int4Weight) or not weight.kernel_fits:
            if isinstance(weight, Int4Weight):
                self.float_layers.append(name)
                weight = weight.dequantize()
            return self.op("Gather", self.const(f"{name}.weight", np.asarray(weight, np.float32)), ids)
        n, k = weight.shape
        blocks, gs = k // weight.group_size, weight.group_size
        # the nibbles as (rows, blocks, gs / 2), quantized along the last axis: the layout MatMulNBits reads, so
        # the tied head shares this initializer
        nibbles = self.const(f"{name}.nibbles", weight.nibbles.reshape(n, blocks, gs // 2))
        scale = self.const(f"{name}.gather_scale", weight.scale.astype(np.float32).reshape(n, blocks, 1))
        zero_point = self.const(f"{name}.gather_zero_point", weight.zero_point.reshape(n, blocks, 1))
        rows = self.op("GatherBlockQuantized", nibbles, ids, scale, zero_point, domain="com.microsoft", bits=4,
                       block_size=gs, gather_axis=0, quantize_axis=2)  # (..., blocks, gs)
        shape = self.op("Concat", self.op("Shape", ids), self.ints("width_of_" + name, [k]), axis=0)
        return self.op("Reshape", rows, shape)

    def head(self, hidden: str) -> str:
        """The tied LM head: hidden (..., d) -> logits (..., v)."""
        weight = self.tensors[f"{self.TOKEN_TABLE}.weight"]
        if isinstance(weight, Int4Weight) and weight.kernel_fits:
            return self.matmul_nbits(hidden, self.TOKEN_TABLE, weight)
        table = weight.dequantize() if isinstance(weight, Int4Weight) else np.asarray(weight, np.float32)
        # Gemm with transB reads the (v, d) table the gather reads: one copy of the tied table
        flat = self.op("Reshape", hidden, self.ints("rows_by_width", [-1, table.shape[1]]))
        logits = self.op("Gemm", flat, self.const(f"{self.TOKEN_TABLE}.weight", table), transB=1)
        lead = self.op("Slice", self.op("Shape", hidden), self.ints("zero", [0]), self.ints("minus_one", [-1]))
        shape = self.op("Concat", lead, self.ints("vocab", [table.shape[0]]), axis=0)
        return self.op("Reshape", logits, shape)

    def softplus(self, x: str) -> str:
        """log(1 + exp(x)): in the sequence graph as max(x, 0) + log(1 + exp(-|x|)), which cannot overflow, since
        ONNX Runtime's Softplus node is scalar code and these five are vectorised; in the step graph, where a node's
        cost is its dispatch, as the one node."""
        if self.graph == "step":
            return self.op("Softplus", x)
        tail = self.op("Log", self.op("Add", self.op("Exp", self.op("Neg", self.op("Abs", x))),
                                      self.const("one_f", np.float32(1))))
        return self.op("Add", self.op("Relu", x), tail)

    def causal_conv(self, x: str, name: str, conv_state: str, present_name: str) -> str:
        """SiLU of the causal depthwise conv `name` on (b, l, di), from the conv state ('' = zeros); writes the
        last k-1 inputs to `present_name` (b, di, k-1)."""
        past_conv = self.op("Transpose", conv_state, perm=[0, 2, 1]) if conv_state else ""  # (b, k-1, di)
        x, present_conv = self.op("CausalConvWithState", x, self.const(f"{name}.weight", self.array(
            f"{name}.weight")), self.const(f"{name}.bias", self.array(f"{name}.bias")), past_conv,
            outputs=2, domain="com.microsoft", activation="silu", channels_last=1, ndim=1)
        self.op("Transpose", present_conv, perm=[0, 2, 1], outputs=[present_name])
        return x

    def mixture(self, x: str, p: str, logits: str, top_k: int, sizes: list[int], biases: bool) -> str:
        """The experts `p`.experts.{e} on x, weighted by the softmax of the top-k router `logits` (..., e), as
        moe_block describes; `biases`: whether the experts' Linears have them."""
        experts = [f"{p}.experts.{e}" for e in range(len(sizes))]
        top, chosen = self.op("TopK", logits, self.ints(f"{p}.top_k", [top_k]), outputs=2, axis=-1)
        zeros = self.op("ConstantOfShape", self.op("Shape", logits),
                        value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        gates = self.op("ScatterElements", zeros, chosen, self.op("Softmax", top, axis=-1), axis=-1)  # (..., e)
        w1 = concatenated([self.tensors[f"{e}.w1.weight"] for e in experts], axis=0)
        b1 = np.concatenate([self.array(f"{e}.w1.bias") for e in experts]) if biases else None
        hidden = self.op("Gelu", self.matmul(x, f"{p}.experts.w1", w1, b1), approximate="none")  # (..., sum h)
        spread = np.repeat(np.eye(len(sizes), dtype=np.float32), sizes, axis=1)  # (e, sum h): gate -> its channels
        weighted = self.op("Mul", hidden, self.op("MatMul", gates, self.const(f"{p}.gate_spread", spread)))
        w2 = concatenated([self.tensors[f"{e}.w2.weight"] for e in experts], axis=1)
        out = self.matmul(weighted, f"{p}.experts.w2", w2)
        if not biases:
            return out
        b2 = np.stack([self.array(f"{e}.w2.bias") for e in experts])  # (e, d)
        return self.op("Add", out, self.op("MatMul", gates, self.const(f"{p}.experts.b2", b2)))

    def body(self, u: str, cfg: ModelConfig, states: dict[int, tuple[str, str]]) -> str:
        """Every layer, then the final norm and the head: logits. `states` maps a layer to its past states
        (conv, ssm); a layer's SSM block writes its new ones to present_conv.{i} and present_ssm.{i}."""
        for i in range(cfg.n_layers):
            if cfg.has_ssm(i):
                u = self.ssm_block(u, i, cfg, *states.get(i, ("", "")), [f"present_conv.{i}", f"present_ssm.{i}"])
            if cfg.has_moe(i):
                u = self.moe_block(u, i, cfg)
        return self.head(self.final_norm(u, cfg))

    # An architecture's blocks: its SSM block (writing its new states to `outputs`), its second block and its final
    # norm, each on (b, l, d) (l = 1 in the step graph).
    def ssm_block(self, u: str, i: int, cfg: ModelConfig, conv_state: str, ssm_state: str, outputs: list[str]) -> str:
        raise NotImplementedError

    def moe_block(self, u: str, i: int, cfg: ModelConfig) -> str:
        raise NotImplementedError

    def final_norm(self, u: str, cfg: ModelConfig) -> str:
        raise NotImplementedError


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers: the weights as ONNX Runtime holds them (4-bit ones as nibbles, scales and
    zero points; MatMulNBits repacks its weight at session start into a blocked layout of the same order)."""
    return sum(int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


def _value_infos(spec: dict[str, list], dtypes: dict[str, int]) -> list:
    return [helper.make_tensor_value_info(name, dtypes.get(name, TensorProto.FLOAT), shape)
            for name, shape in spec.items()]


def build(builder_class: type[GraphBuilder], tensors: dict[str, Weight], cfg: ModelConfig, graph: str,
          accuracy_level: int, metadata: dict[str, str]) -> tuple[onnx.ModelProto, list[str]]:
    """The `graph` ('sequence' or 'step') of the model with these tensors (torch state_dict names; a 4-bit weight
    as Int4Weight), built by its architecture's builder; returns the model and the 4-bit layers that run as float32
    MatMuls."""
    builder = builder_class(tensors, graph, accuracy_level)
    if graph == "sequence":
        positions = builder.op("Range", builder.ints("zero_scalar", 0), builder.op(
            "Squeeze", builder.op("Slice", builder.op("Shape", "ids"), builder.ints("one", [1]),
                                  builder.ints("two", [2])), builder.ints("zero", [0])), builder.ints("one_scalar", 1))
        states = {}
    else:
        positions = "position"
        states = {i: (f"past_conv.{i}", f"past_ssm.{i}") for i in ssm_layers(cfg)}
    u = builder.op("Add", builder.embedding("ids", builder.TOKEN_TABLE), builder.embedding(positions,
                                                                                      builder.POSITION_TABLE))
    if graph == "step":
        u = builder.op("Unsqueeze", u, builder.ints("one", [1]))  # (b, 1, d): the sequence graph's blocks at l = 1
    logits = builder.body(u, cfg, states)
    if graph == "step":
        logits = builder.op("Squeeze", logits, builder.ints("one", [1]))
    builder.op("Identity", logits, outputs=["logits"])
    spec = interface(cfg)[graph]
    ints = {"ids": TensorProto.INT64, "position": TensorProto.INT64}
    onnx_graph = helper.make_graph(builder.nodes, f"iteralite_{graph}", _value_infos(spec["inputs"], ints),
                                   _value_infos(spec["outputs"], {}), list(builder.initializers.values()))
    model = helper.make_model(onnx_graph, ir_version=IR_VERSION, producer_name="iteralite",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    helper.set_model_props(model, {"iteralite.format": FORMAT, "iteralite.graph": graph, **metadata})
    onnx.checker.check_model(model)
    return model, builder.float_layers
