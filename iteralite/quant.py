"""INT4 weights: group-wise asymmetric 4-bit, two nibbles per byte, a 16-bit scale and a 4-bit zero point per group.

Quantized: every Linear weight, the tied embedding / LM-head table (stored once) and the position embedding. Kept in
16-bit floats (float32 again at load): tensors whose name contains an entry of `keep_high_precision` (A_log, D, conv1d,
norms, biases by default), and the SSM's B and C. These hold about 2% of a model's parameters, but in float32 they
were over a tenth of an INT4 file.

The file holds plain nibbles (uint8, low nibble = even column) and loads with torch.load(weights_only=True). The
packed layout of torch's int4 matmul depends on the CPU's instruction set, so it is built at load time on the machine
that runs the model (`Int4Linear.prepare`); where the kernel is missing or a shape does not fit it, the layer
dequantizes its weight on the fly (the fallback path).

Which path runs is chosen per machine (`load_quantized(path=...)`): "kernel" (int4 matmul, 4-bit weights in memory),
"dequantize" (4-bit in memory, dequantized at every call) or "unpacked" (dequantized once at load: float32 speed and
memory, the file stays 4-bit). "auto" keeps "unpacked" unless the kernel measurably wins for this model on this
machine: at load, every distinct shape of the model's own 4-bit layers is timed with the CPU int4 kernel and with a
float32 matmul, and the kernel is taken only if it is at least 10% faster in sum. On CUDA "auto" is "unpacked": torch's
CUDA int4 kernel (tinygemm) is a batch-1 decode kernel, and this timing uses the CPU kernel. The path taken is
recorded (`int4_path`) and lands in the summary.

Dequantization: w = (q - zero_point) * scale, q and zero_point in [0, 15], the group's range widened to hold 0 so
that 0 is exactly representable. This is the layout 4-bit kernels take natively (ONNX Runtime's MatMulNBits and
GatherBlockQuantized, iteralite.onnxgraph), so the exported model computes these values with one node per layer.
torch's int4 kernels compute (q - 8) * scale + zero', so zero' = (8 - zero_point) * scale.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architectures.configs import config_from_dict
from .architectures.models import model_class
from .artifacts import CheckpointError, load_torch, save_torch
from .checkpoint import load_checkpoint
from .layers import count_parameters

INT4_FORMAT = "iteralite-int4-v3"  # v3: integer zero points (v2: float zeros); the rest in float16
KERNEL_GROUP_SIZES = (32, 64, 128, 256)
log = logging.getLogger(__name__)


def group_size_for(k: int, requested: int) -> int:
    """The requested group size if it divides the row, else the largest power of two below it that does."""
    size = requested
    while size > 1 and k % size:
        size //= 2
    return size


def quantize_tensor(w: torch.Tensor, group_size: int) -> dict:
    """(N, K) float -> nibbles (N, ceil(K/2)) uint8, scale (N, K/group) float16, zero_point (N, K/group) uint8."""
    n, k = w.shape
    gs = group_size_for(k, group_size)
    groups = w.detach().float().reshape(n, k // gs, gs)
    low, high = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
    scale = ((high - low) / 15).half().clamp(min=torch.finfo(torch.float16).tiny)  # an all-zero group stays exact
    zero_point = torch.round(-low / scale.float()).clamp(0, 15)
    q = torch.round(groups / scale.float().unsqueeze(-1) + zero_point.unsqueeze(-1)).clamp(0, 15).to(torch.uint8)
    return {"nibbles": pack_nibbles(q.reshape(n, k)), "scale": scale, "zero_point": zero_point.to(torch.uint8),
            "group_size": gs, "k": k}


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 in [0, 15] -> (N, ceil(K/2)) uint8, even columns in the low nibble."""
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack_nibbles: (N, ceil(K/2)) -> (N, K) uint8."""
    q = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    return q[:, :k]


def dequantize(nibbles, scale, zero_point, group_size: int, k: int) -> torch.Tensor:
    q = unpack_nibbles(nibbles, k).float()
    n = q.shape[0]
    w = (q.reshape(n, k // group_size, group_size) - zero_point.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
    return w.reshape(n, k)


class Int4Linear(nn.Module):
    """y = x W^T + b with W in 4 bits; torch's int4 matmul where it fits, on-the-fly dequantization elsewhere."""

    def __init__(self, qt: dict, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("nibbles", qt["nibbles"])
        self.register_buffer("scale", qt["scale"])
        self.register_buffer("zero_point", qt["zero_point"])
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group_size, self.in_features = qt["group_size"], qt["k"]
        self.out_features = qt["nibbles"].shape[0]
        self.packed = None  # (kernel layout, scales_and_zeros), built by prepare()
        self.unpacked = None  # float32 weight, built by unpack()

    def weight_fp32(self) -> torch.Tensor:
        return dequantize(self.nibbles, self.scale, self.zero_point, self.group_size, self.in_features)

    def unpack(self) -> None:
        """Dequantize once: float32 speed and memory from here on."""
        self.unpacked = self.weight_fp32()

    def prepare(self) -> bool:
        """Build the int4 kernel's layout for this machine; False (fallback path) where it does not apply."""
        n, k, gs = self.out_features, self.in_features, self.group_size
        if n % 16 or k % gs or gs not in KERNEL_GROUP_SIZES or os.environ.get("ITERALITE_INT4_KERNEL") == "0":
            return False
        device = self.nibbles.device
        q = unpack_nibbles(self.nibbles, k).to(torch.int32)
        zero_k = (8 - self.zero_point.float()) * self.scale.float()  # kernel computes (q - 8) * scale + zero'
        sz = torch.stack([self.scale.float(), zero_k], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        try:
            if device.type == "cpu":
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            else:
                packed = torch.ops.aten._convert_weight_to_int4pack(self.nibbles_for_cuda(q), 8)
        except (RuntimeError, AttributeError) as err:
            log.info("int4 kernel unavailable for %dx%d (%s); dequantize fallback", n, k, err)
            return False
        self.packed = (packed, sz)
        probe = torch.randn(4, k, device=device)
        if not torch.allclose(self._kernel(probe), self._fallback(probe), rtol=0.05, atol=0.05):
            log.warning("int4 kernel disagrees with dequantization for %dx%d; fallback used", n, k)
            self.packed = None
            return False
        return True

    @staticmethod
    def nibbles_for_cuda(q: torch.Tensor) -> torch.Tensor:
        return (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)  # the CUDA op wants the high nibble first

    def _kernel(self, x2d):
        packed, sz = self.packed
        if x2d.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2d.to(torch.bfloat16).contiguous(), packed,
                                                            self.group_size, sz)
        else:
            y = torch.ops.aten._weight_int4pack_mm(x2d.to(torch.bfloat16).contiguous(), packed, self.group_size, sz)
        return y.float()

    def _fallback(self, x2d):
        return x2d.float() @ self.weight_fp32().t()

    def forward(self, x):  # (..., K) -> (..., N)
        x2d = x.reshape(-1, self.in_features)
        if self.unpacked is not None:  # the float32 model's op on the rows it folds a (b, l, K) input into
            y = F.linear(x2d.float(), self.unpacked, self.bias)
        else:
            y = self._kernel(x2d) if self.packed is not None else self._fallback(x2d)
            y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4Embedding(Int4Linear):
    """The tied token table in 4 bits: a lookup dequantizes only the gathered rows; as LM head it is an Int4Linear."""

    def forward(self, idx):  # (...) ids -> (..., d)
        if self.unpacked is not None:
            return F.embedding(idx, self.unpacked)
        flat = idx.reshape(-1)
        rows = dequantize(self.nibbles[flat], self.scale[flat], self.zero_point[flat], self.group_size,
                          self.in_features)
        return rows.reshape(*idx.shape, self.in_features)

    def head(self, hidden):  # (..., d) -> (..., v)
        return super().forward(hidden)


class Int4Head:
    """An INT4 model's LM head: through its 4-bit token table (Int4Embedding.head)."""

    def head(self, hidden):
        return self.token_embedding.head(hidden)


@functools.cache
def quantized_class(model: type) -> type:
    """An architecture's model class with INT4 weights: its forward, through the 4-bit tied table as LM head."""
    return type(f"Quantized{model.__name__}", (Int4Head, model), {"__module__": model.__module__})


def is_quantized(name: str, tensor: torch.Tensor, keep: list[str]) -> bool:
    if tensor.dim() != 2 or name.endswith((".B", ".C")):
        return False
    return not any(k in name for k in keep)


def quantize_model(model, group_size: int, keep: list[str], tokenizer_sha256: str) -> tuple[dict, dict]:
    """(file content, stats); stats hold bits per parameter and reconstruction errors.

    The file concatenates all nibbles, all scales, all zero points and all 16-bit tensors into four flat tensors with an
    index of plain ints, so its size stays within a few kilobytes of the payload (one zip record per tensor would
    add about 0.3 kB each).
    """
    parts = {"nibbles": [], "scale": [], "zero_point": [], "dense": []}
    offsets = dict.fromkeys(parts, 0)
    index, tensors, total_bits = [], [], 0
    for name, w in model.state_dict().items():
        entry = {"name": name, "shape": list(w.shape)}
        if is_quantized(name, w, keep):
            qt = quantize_tensor(w, group_size)
            for key in ("nibbles", "scale", "zero_point"):
                entry[key] = offsets[key]
                parts[key].append(qt[key].reshape(-1))
                offsets[key] += qt[key].numel()
            entry["group_size"] = qt["group_size"]
            recon = dequantize(qt["nibbles"], qt["scale"], qt["zero_point"], qt["group_size"], qt["k"])
            bits = qt["nibbles"].numel() * 8 + qt["scale"].numel() * 16 + qt["zero_point"].numel() * 8
            error = ((recon - w.float()).norm() / w.float().norm().clamp(min=1e-12)).item()
            precision = "int4"
        else:
            entry["dense"] = offsets["dense"]
            kept = w.detach().float().half()
            parts["dense"].append(kept.reshape(-1))
            offsets["dense"] += w.numel()
            error = ((kept.float() - w.float()).norm() / w.float().norm().clamp(min=1e-12)).item()
            bits, precision = w.numel() * 16, "fp16"
        index.append(entry)
        tensors.append({"tensor": name, "params": w.numel(), "bits": bits, "bits_per_param": bits / w.numel(),
                        "group_size": entry.get("group_size"), "relative_error": error, "precision": precision})
        total_bits += bits
    blob = {"format": INT4_FORMAT, "config": model.cfg.to_dict(), "tokenizer_sha256": tokenizer_sha256,
            "n_params": count_parameters(model), "group_size": group_size, "index": index}
    empty = {"nibbles": torch.uint8, "scale": torch.float16, "zero_point": torch.uint8, "dense": torch.float16}
    for key, chunks in parts.items():
        blob[key] = torch.cat(chunks) if chunks else torch.empty(0, dtype=empty[key])
    n_params = sum(t["params"] for t in tensors)
    stats = {"group_size": group_size, "params": n_params, "payload_bytes": total_bits // 8,
             "bits_per_param": total_bits / n_params,
             "int4_fraction": sum(t["params"] for t in tensors if t["precision"] == "int4") / n_params,
             "tensors": tensors}
    return blob, stats


def _unflatten(blob: dict) -> tuple[dict, dict]:
    """The flat file -> ({name: float tensor}, {name: quantized parts})."""
    dense, quantized = {}, {}
    for entry in blob["index"]:
        shape = entry["shape"]
        if "dense" in entry:
            n = 1
            for dim in shape:
                n *= dim
            dense[entry["name"]] = blob["dense"][entry["dense"] : entry["dense"] + n].reshape(shape).float()
            continue
        rows, k = shape
        gs = entry["group_size"]
        n_nib, n_groups = rows * ((k + 1) // 2), rows * (k // gs)
        quantized[entry["name"]] = {
            "nibbles": blob["nibbles"][entry["nibbles"] : entry["nibbles"] + n_nib].reshape(rows, -1).clone(),
            "scale": blob["scale"][entry["scale"] : entry["scale"] + n_groups].reshape(rows, -1).clone(),
            "zero_point": blob["zero_point"][entry["zero_point"] : entry["zero_point"] + n_groups].reshape(rows, -1)
            .clone(),
            "group_size": gs, "k": k,
        }
    return dense, quantized


def save_quantized(path, blob: dict) -> None:
    save_torch(path, blob)


PATHS = ("auto", "kernel", "dequantize", "unpacked")


KERNEL_MARGIN = 0.9  # the kernel must take at most this fraction of float32's time: a race within noise keeps fp32


def kernel_wins(layers: list, tokens: int = 128) -> bool:
    """Whether torch's CPU int4 matmul beats float32 on these layers' own shapes (each distinct shape timed once,
    weighted by how often it occurs), by KERNEL_MARGIN, on this machine."""
    shapes: dict[tuple[int, int, int], int] = {}
    for layer in layers:
        key = (layer.out_features, layer.in_features, layer.group_size)
        shapes[key] = shapes.get(key, 0) + 1
    int4 = fp32 = 0.0
    for (n, k, group_size), count in shapes.items():
        t_int4, t_fp32 = matmul_seconds(tokens, n, k, group_size)
        int4, fp32 = int4 + count * t_int4, fp32 + count * t_fp32
    return int4 < KERNEL_MARGIN * fp32


def matmul_seconds(tokens: int = 128, n: int = 8000, k: int = 128, group_size: int = 32) -> tuple[float, float]:
    """Best-of-5 seconds of torch's CPU int4 matmul and of a float32 matmul, (tokens x k) @ (k x n); the int4
    figure is infinite where this torch build has no CPU int4 kernel."""
    import time

    try:
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.ones(k // group_size, n, 2, dtype=torch.bfloat16)
    except (RuntimeError, AttributeError):
        return float("inf"), 0.0
    x, w = torch.randn(tokens, k), torch.randn(n, k)

    def best_of(fn, repeats=5):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    fp32 = best_of(lambda: x @ w.t())
    try:
        int4 = best_of(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, group_size,
                                                                          sz))
    except RuntimeError:  # a shape or group size the kernel does not take
        return float("inf"), fp32
    return int4, fp32


def load_quantized(path, device="cpu", path_mode: str = "auto", blob: dict | None = None) -> Int4Head:
    """Rebuild an inference model from an INT4 file (from `blob` when the file was already loaded); its matmul path
    is chosen here, for this machine."""
    if path_mode not in PATHS:
        raise ValueError(f"INT4 path must be one of {PATHS}, got {path_mode!r}")
    blob = load_torch(path, "INT4 model") if blob is None else blob
    if not isinstance(blob, dict) or blob.get("format") != INT4_FORMAT:
        found = blob.get("format", "no format key") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{path} is not an INT4 model file: expected format {INT4_FORMAT!r} (written by the "
                              f"quantize rule), found {found!r}; an fp32 checkpoint loads with load_model")
    missing_keys = {"config", "index", "n_params", "nibbles", "scale", "zero_point", "dense"} - set(blob)
    if missing_keys:
        raise CheckpointError(f"INT4 model file {path} lacks {sorted(missing_keys)}")
    try:
        cfg = config_from_dict(blob["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"INT4 model file {path} has an unusable model config: {err}") from None
    with torch.device("meta"):
        model = quantized_class(model_class(cfg))(cfg)
    try:
        dense, quantized = _unflatten(blob)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # an index that does not match its tensors
        raise CheckpointError(f"INT4 model file {path} has an inconsistent index ({type(err).__name__}: {err})") \
            from None
    model.load_state_dict(dense, strict=False, assign=True)
    modules = dict(model.named_modules())
    for name, qt in quantized.items():
        module_name = name.rsplit(".", 1)[0]
        bias = dense.get(module_name + ".bias")
        cls = Int4Embedding if isinstance(modules[module_name], nn.Embedding) else Int4Linear
        replacement = cls(qt, bias)
        parent_name, _, child = module_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, replacement)
    missing = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if missing:
        raise ValueError(f"INT4 file {path} lacks tensors {missing[:5]}")
    model.n_params = int(blob["n_params"])
    model.to(device).eval()
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    if path_mode == "auto":
        path_mode = "kernel" if torch.device(device).type == "cpu" and kernel_wins(layers) else "unpacked"
    on_kernel = 0
    for layer in layers:
        if path_mode == "unpacked":
            layer.unpack()
        elif path_mode == "kernel":
            on_kernel += layer.prepare()
    model.int4_path = path_mode
    model.kernel_layers = (on_kernel, len(layers))
    return model


def load_model(path, int4_path: str, device="cpu") -> nn.Module:
    """An fp32 checkpoint or an INT4 file, as an inference model on `device`; an INT4 file takes the matmul path
    `int4_path`."""
    blob = load_torch(path, "model file")  # read once, whichever format it holds
    if isinstance(blob, dict) and blob.get("format") == INT4_FORMAT:
        return load_quantized(path, device=device, path_mode=int4_path, blob=blob)
    return load_checkpoint(path, blob=blob)[0].to(device).eval()
