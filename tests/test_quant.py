import copy
import os
import subprocess
import sys

import pytest
import torch

from iteralite import quant
from iteralite.architectures.selective_scan.model import Model as SelectiveScan


def test_pack_unpack_round_trip_is_exact():
    q = torch.randint(0, 16, (24, 37), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = quant.pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 19)
    assert torch.equal(quant.unpack_nibbles(packed, 37), q)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_dequantization_error_is_bounded_by_half_a_step(group_size):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(1))
    qt = quant.quantize_tensor(w, group_size)
    recon = quant.dequantize(qt["nibbles"], qt["scale"], qt["zero_point"], qt["group_size"], qt["k"])
    step = qt["scale"].float().repeat_interleave(group_size, dim=1)
    # half a quantization step, plus float16 rounding of the scale
    assert ((recon - w).abs() <= step / 2 + 2e-3 * w.abs().max()).all()
    assert (recon - w).norm() / w.norm() < 0.12


def test_fast_path_matches_fallback(tiny_model, tmp_path):
    blob, _ = quant.quantize_model(tiny_model, 32, ["A_log", "D", "conv1d", "norm", "bias"], "sha")
    quant.save_quantized(tmp_path / "m.pt", blob)
    fast = quant.load_quantized(tmp_path / "m.pt", path_mode="kernel")
    slow = quant.load_quantized(tmp_path / "m.pt", path_mode="dequantize")
    unpacked = quant.load_quantized(tmp_path / "m.pt", path_mode="unpacked")
    assert fast.kernel_layers[0] > 0, "the int4 kernel was used for no layer"
    idx = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, _ = fast(idx)
        b, _ = slow(idx)
        c, _ = unpacked(idx)
    assert (a - b).abs().max() / b.abs().max() < 0.05  # bf16 activations on the kernel path
    torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-4)  # the same float32 weights, dequantized once
    assert unpacked.int4_path == "unpacked" and unpacked.kernel_layers[0] == 0


def test_file_size_is_near_the_theoretical_byte_count(tmp_path):
    torch.manual_seed(0)
    from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig

    model = SelectiveScan(SelectiveScanConfig())
    blob, stats = quant.quantize_model(model, 32, ["A_log", "D", "conv1d", "norm", "bias"], "sha")
    path = tmp_path / "m.pt"
    quant.save_quantized(path, blob)
    assert abs(os.path.getsize(path) / stats["payload_bytes"] - 1) < 0.05
    # 4 bits + a 16-bit scale and an 8-bit zero point per 32 weights = 4.75 bits on the quantized tensors
    int4 = [t for t in stats["tensors"] if t["precision"] == "int4"]
    assert all(t["bits_per_param"] == pytest.approx(4.75) for t in int4 if t["group_size"] == 32)
    assert blob["nibbles"].dtype == torch.uint8 and blob["dense"].dtype == torch.float16
    assert {t["tensor"] for t in stats["tensors"] if t["precision"] == "fp16"} >= {"layers.0.ssm.B", "norm_f.weight"}
    assert stats["bits_per_param"] < 4.95  # the 16-bit rest adds under 0.2 bit per parameter


def test_tie_survives_and_table_is_stored_once(tiny_model, tmp_path):
    blob, _ = quant.quantize_model(tiny_model, 32, ["norm", "bias"], "sha")
    names = [e["name"] for e in blob["index"]]
    assert names.count("tok_emb.weight") == 1 and not any("head" in n for n in names)
    quant.save_quantized(tmp_path / "m.pt", blob)
    model = quant.load_quantized(tmp_path / "m.pt", path_mode="dequantize")
    hidden = torch.randn(3, 32)
    rows = model.tok_emb(torch.arange(300))
    torch.testing.assert_close(model.head(hidden), hidden @ rows.t(), rtol=1e-4, atol=1e-4)


def test_quantized_file_loads_weights_only_in_fresh_process(tiny_model, tmp_path):
    blob, _ = quant.quantize_model(tiny_model, 32, ["norm", "bias"], "sha")
    path = tmp_path / "m.pt"
    quant.save_quantized(path, blob)
    code = (
        "import torch\n"
        f"blob = torch.load({str(path)!r}, weights_only=True)\n"
        "from iteralite.quant import load_quantized\n"
        f"m = load_quantized({str(path)!r})\n"
        "print(blob['format'], m.n_params)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["iteralite-int4-v3", str(sum(p.numel() for p in tiny_model.parameters()))]


def test_int4_test_perplexity_does_not_depend_on_which_path_is_faster(tiny_model, tmp_path, monkeypatch):
    """Evaluation takes one fixed numeric path, whatever the load-time timing of the int4 kernel would choose."""
    import json

    from iteralite.artifacts import save_torch
    from iteralite.stages import evaluate

    blob, _ = quant.quantize_model(tiny_model, 32, ["A_log", "D", "conv1d", "norm", "bias"], "sha")
    quant.save_quantized(tmp_path / "m.pt", blob)
    test = torch.randint(0, 300, (3000,), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    save_torch(tmp_path / "tokens.pt", {"tokens": {"test": test}, "tokenizer_sha256": "sha"})
    results = []
    for kernel_wins in (True, False):
        monkeypatch.setattr(quant, "kernel_wins", lambda layers, kernel_wins=kernel_wins: kernel_wins)
        out = tmp_path / f"{kernel_wins}.json"
        evaluate.evaluate("int4-baseline/dense", str(tmp_path / "m.pt"), str(tmp_path / "tokens.pt"), 2000,
                          torch.device("cpu"), str(out))
        results.append(json.loads(out.read_text())["test_ppl"])
    assert results[0] == results[1]
    kernel = quant.load_quantized(tmp_path / "m.pt", path_mode="kernel")
    assert kernel.kernel_layers[0] > 0  # the path `auto` could have taken computes other numbers


def test_quantized_model_computes_what_the_float_model_with_dequantized_weights_does(tiny_model, tmp_path):
    """Every quantized tensor sits where it belongs (the position table is an embedding, not a Linear)."""
    keep = ["A_log", "D", "conv1d", "norm", "bias"]
    blob, _ = quant.quantize_model(tiny_model, 32, keep, "sha")
    quant.save_quantized(tmp_path / "m.pt", blob)
    quantized = quant.load_quantized(tmp_path / "m.pt", path_mode="unpacked")
    assert isinstance(quantized.pos_emb, quant.Int4Embedding)
    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for name, w in reference.state_dict().items():
            if quant.is_quantized(name, w, keep):
                qt = quant.quantize_tensor(w, 32)
                w.copy_(quant.dequantize(qt["nibbles"], qt["scale"], qt["zero_point"], qt["group_size"], qt["k"]))
            else:
                w.copy_(w.half().float())  # the 16-bit rest
        idx = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(quantized(idx)[0], reference(idx)[0], rtol=1e-4, atol=1e-4)
        step_logits, _ = quantized.step(idx[:, 0], 0, quantized.empty_cache(2))  # recurrent mode, as generation
        torch.testing.assert_close(step_logits, reference(idx[:, :1])[0][:, 0], rtol=1e-4, atol=1e-4)


def test_auto_keeps_float32_unless_the_kernel_wins_on_the_models_own_layers(tiny_model, tmp_path, monkeypatch):
    """'auto' times every distinct 4-bit layer shape of this model; a kernel within the margin keeps 'unpacked'."""
    blob, _ = quant.quantize_model(tiny_model, 32, ["A_log", "D", "conv1d", "norm", "bias"], "sha")
    quant.save_quantized(tmp_path / "m.pt", blob)
    timed = []

    def fake_timing(tokens, n, k, group_size):
        timed.append((n, k))
        return 0.95, 1.0  # the kernel 5% faster: within the margin

    monkeypatch.setattr(quant, "matmul_seconds", fake_timing)
    model = quant.load_quantized(tmp_path / "m.pt")
    assert model.int4_path == "unpacked"
    layers = [m for m in model.modules() if isinstance(m, quant.Int4Linear)]
    assert sorted(set(timed)) == sorted({(m.out_features, m.in_features) for m in layers}) and len(layers) > 8
    monkeypatch.setattr(quant, "matmul_seconds", lambda tokens, n, k, group_size: (0.5, 1.0))
    assert quant.load_quantized(tmp_path / "m.pt").int4_path == "kernel"


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {}, "config": {}}, "is not an INT4 model file: expected format 'iteralite-int4-v3'"),
    ({"format": "iteralite-int4-v3", "config": {}},
     "lacks ['dense', 'index', 'n_params', 'nibbles', 'scale', 'zero_point']"),
    ([1, 2, 3], "found 'list'"),
])
def test_load_quantized_names_the_file_and_the_expected_format(tmp_path, content, message):
    from iteralite.artifacts import CheckpointError, save_torch

    path = tmp_path / "not-int4.pt"
    save_torch(path, content)
    with pytest.raises(CheckpointError) as err:
        quant.load_quantized(path)
    assert str(path) in str(err.value) and message in str(err.value)
