"""The ONNX export (iteralite.export, onnxgraph) and its serving without torch (iteralite.serve)."""

import copy
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from iteralite import export, onnxgraph, quant, serve
from iteralite.architectures import facet
from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig
from iteralite.architectures.selective_scan.model import Model as SelectiveScan
from iteralite.checkpoint import save_checkpoint
from iteralite.stages import export as export_stage

KEEP = ["A_log", "D", "conv1d", "norm", "bias"]
SETTINGS = export.ExportSettings(verify_windows=4, verify_tokens=1500)
TOKENS = torch.randint(0, 300, (2500,), generator=torch.Generator().manual_seed(0))


def saved(model, tmp_path: Path, int4: bool) -> str:
    path = tmp_path / ("int4.pt" if int4 else "model.pt")
    if int4:
        quant.save_quantized(path, quant.quantize_model(model, 32, KEEP, "sha")[0])
    else:
        save_checkpoint(path, model, "sha")
    return str(path)


def runtime_of(files: dict, manifest: dict) -> serve.OnnxModel:
    return serve.OnnxModel.from_bytes(files, manifest)


@pytest.mark.parametrize("int4", [False, True])
def test_both_graphs_compute_what_the_torch_model_computes(tiny_model, tmp_path, int4):
    """The sequence graph's logits and final state, and the step graph token by token, against torch's forward and
    torch's own step mode (the model's `step`), independently of the export's verification."""
    path = saved(tiny_model, tmp_path, int4)
    files, manifest = export.export("m", path, TOKENS, "sha", SETTINGS)
    model = quant.load_model(path, export.TORCH_INT4_PATH)
    runtime = runtime_of(files, manifest)
    ids = TOKENS[:64].reshape(2, 32)
    with torch.no_grad():
        expected, _ = model(ids)
        cache = model.empty_cache(2)
        stepped = []
        for position in range(32):
            logits, cache = model.step(ids[:, position], position, cache)
            stepped.append(logits)
    tolerance = 1e-3 if int4 else 1e-4
    logits, state = runtime.prefill(ids.numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=tolerance, rtol=0)
    for layer, (conv, ssm) in enumerate(cache):
        np.testing.assert_allclose(state[f"past_conv.{layer}"], conv.numpy(), atol=tolerance, rtol=0)
        np.testing.assert_allclose(state[f"past_ssm.{layer}"], ssm.numpy(), atol=tolerance, rtol=0)
    onnx_state, onnx_steps = runtime.empty_state(2), []
    for position in range(32):
        step_logits, onnx_state = runtime.step(ids[:, position].numpy(), np.full(2, position), onnx_state)
        onnx_steps.append(step_logits)
    np.testing.assert_allclose(np.stack(onnx_steps, 1), torch.stack(stepped, 1).numpy(), atol=tolerance, rtol=0)
    figures = manifest["verification"]
    assert figures["sequence_max_abs_diff"] <= tolerance and figures["perplexity_relative_diff"] <= 1e-3
    assert figures["onnxruntime_perplexity"] == pytest.approx(figures["torch_perplexity"], rel=1e-3)


def test_int4_weights_stay_4_bit_in_the_graph(tiny_model, tmp_path):
    """Every Linear and the tied head are MatMulNBits, both embeddings GatherBlockQuantized, the head and the token
    gather share one table of nibbles, and no float32 weight matrix is left."""
    files, manifest = export.export("m", saved(tiny_model, tmp_path, True), TOKENS, "sha", SETTINGS)
    float_files, float_manifest = export.export("m", saved(tiny_model, tmp_path, False), TOKENS, "sha", SETTINGS)
    graph = onnx.load_from_string(files["model.onnx"]).graph
    ops = Counter(node.op_type for node in graph.node)
    # per layer in_proj, delta_proj, out_proj, the router, the experts' w1 and w2 (each joined into one); the head
    assert ops["MatMulNBits"] == 6 * tiny_model.cfg.n_layers + 1 and ops["GatherBlockQuantized"] == 2
    assert ops["Gemm"] == ops["Gather"] == 0
    # the float32 MatMuls left are the gates' (tokens x experts) @ (experts x ...): the MoE's mixing, no weight
    assert ops["MatMul"] == 2 * tiny_model.cfg.n_layers
    users = Counter(name for node in graph.node for name in node.input)
    assert users["tok_emb.nibbles"] == 2  # the gather and the head
    float32_matrices = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                        and min(t.dims) > 8]
    assert float32_matrices == []
    int4_bytes = manifest["graphs"]["sequence"]["weight_bytes"]
    assert int4_bytes < 0.25 * float_manifest["graphs"]["sequence"]["weight_bytes"]
    assert manifest["precision"] == "int4" and manifest["float_layers"] == []


def test_a_pruned_model_with_a_skipped_block_and_small_groups_exports(tmp_path):
    """Per-layer sizes, a layer without its SSM block (no state for it), and 4-bit layers whose group is under
    MatMulNBits' smallest block (a 24-wide expert: groups of 8; its layer's joined w2 runs as a float32 MatMul of
    the same values)."""
    torch.manual_seed(1)
    cfg = SelectiveScanConfig(vocab_size=300, d_model=32, n_layers=3, max_seq=32, d_inner=48, d_state=4, n_experts=3,
                          expert_hidden=16, top_k=2, layer_d_inner=[48, 0, 32],
                          layer_expert_hidden=[[16, 24], [16, 16, 16], []])
    model = SelectiveScan(cfg).eval()
    files, manifest = export.export("m", saved(model, tmp_path, True), TOKENS, "sha", SETTINGS)
    assert set(manifest["interface"]["step"]["inputs"]) == {"ids", "position", "past_conv.0", "past_ssm.0",
                                                            "past_conv.2", "past_ssm.2"}
    assert manifest["float_layers"] == ["layers.0.moe.experts.w2"]
    assert manifest["verification"]["sequence_max_abs_diff"] <= 1e-3


def test_a_graph_that_differs_from_torch_fails_the_export_naming_model_graph_and_difference(tiny_model, tmp_path,
                                                                                           monkeypatch):
    path = saved(tiny_model, tmp_path, False)
    original = export.model_tensors

    def perturbed(model):
        tensors = original(model)
        tensors["layers.0.ssm.out_proj.weight"] = tensors["layers.0.ssm.out_proj.weight"] * 1.01
        return tensors

    monkeypatch.setattr(export, "model_tensors", perturbed)
    with pytest.raises(export.ExportError, match=r"export of finetuned/x: the sequence graph's logits differ from "
                                                 r"torch's by [0-9.e-]+ \(max abs, relative to the largest entry "
                                                 r"where that exceeds 1\), more than the tolerance 0.0001"):
        export.export("finetuned/x", path, TOKENS, "sha", SETTINGS)


def test_a_step_graph_that_differs_from_the_sequence_graph_fails_the_export(tiny_model, tmp_path, monkeypatch):
    step = serve.OnnxModel.step

    def drifting(self, ids, positions, state):
        logits, new_state = step(self, ids, positions, state)
        return logits + 1e-3, new_state

    monkeypatch.setattr(serve.OnnxModel, "step", drifting)
    with pytest.raises(export.ExportError, match="the step graph's logits over a window"):
        export.export("baseline/dense", saved(tiny_model, tmp_path, False), TOKENS, "sha", SETTINGS)


def test_a_failed_verification_writes_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PERPLEXITY_TOLERANCE", -1.0)
    tokens_path, tokenizer_path = tokens_and_tokenizer(tmp_path)
    out = outputs(tmp_path / "export")
    with pytest.raises(export.ExportError, match="test perplexity through ONNX Runtime"):
        export_stage.export("m", saved(tiny_model, tmp_path, False), tokens_path, tokenizer_path, SETTINGS, out)
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())


# --- serving -------------------------------------------------------------------------------------------------

def tokens_and_tokenizer(tmp_path: Path) -> tuple[str, str]:
    """A 300-token BPE tokenizer and tokens.pt holding its SHA-256, as the tokenize rule writes them."""
    from iteralite import data
    from iteralite.artifacts import save_torch
    from iteralite.provenance import file_sha256

    text = " ".join(f"word{i % 97} other{i % 13} thing{i % 7}." for i in range(3000))
    tokenizer = data.train_tokenizer(text, 300)
    tokenizer_path = tmp_path / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    tokens_path = tmp_path / "tokens.pt"
    ids = torch.tensor(tokenizer.encode(text).ids)
    save_torch(tokens_path, {"tokens": {"test": ids}, "tokenizer_sha256": file_sha256(tokenizer_path)})
    return str(tokens_path), str(tokenizer_path)


def outputs(directory: Path) -> dict:
    return {"sequence": directory / "model.onnx", "step": directory / "step.onnx",
            "tokenizer": directory / "tokenizer.json", "manifest": directory / "export.json"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_cfg):
    """The tiny model, INT4, exported by the rule's stage function, with its tokenizer."""
    tmp_path = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = SelectiveScan(tiny_cfg).eval()
    tokens_path, tokenizer_path = tokens_and_tokenizer(tmp_path)
    directory = tmp_path / "int4-finetuned" / "x"
    export_stage.export("int4-finetuned/x", saved(model, tmp_path, True), tokens_path, tokenizer_path, SETTINGS,
                        outputs(directory))
    return directory, model


@pytest.fixture(scope="module")
def tiny_cfg():  # the module-scoped twin of conftest's (the export is made once for every serving test)
    return SelectiveScanConfig(vocab_size=300, d_model=32, n_layers=2, max_seq=32, d_inner=48, d_state=4, d_conv=4,
                           n_experts=4, expert_hidden=16, top_k=2)


WITHOUT_TORCH = """import runpy, sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
sys.argv = ["iteralite.serve", *sys.argv[1:]]
runpy.run_module("iteralite.serve", run_name="__main__")
"""


def serve_without_torch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_serving_needs_no_torch_and_generates_what_the_torch_int4_model_generates(exported):
    """Greedy generation through ONNX Runtime in a process where `import torch` fails, against the torch INT4 model's
    greedy steps from the same prompt."""
    directory, _ = exported
    run = serve_without_torch(directory, "--prompt", "word1 other1", "--tokens", 12, "--temperature", 0)
    assert run.returncode == 0, run.stderr
    tokenizer = serve.load_tokenizer(directory, json.loads((directory / "export.json").read_text()))
    prompt = tokenizer.encode("word1 other1").ids
    model = quant.load_model(directory.parent.parent / "int4.pt", export.TORCH_INT4_PATH)
    ids, cache = list(prompt), model.empty_cache(1)
    with torch.no_grad():
        for position in range(len(prompt) + 12 - 1):
            logits, cache = model.step(torch.tensor([ids[position]]), position, cache)
            if position >= len(prompt) - 1:
                ids.append(int(logits.argmax()))
    assert run.stdout.strip() == tokenizer.decode(ids)


def test_served_perplexity_is_the_exports_verified_one(exported, tmp_path):
    directory, _ = exported
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"word{i % 97} other{i % 13} thing{i % 7}." for i in range(3000)))
    run = serve_without_torch(directory, "--perplexity", text, "--max-tokens", SETTINGS.verify_tokens)
    assert run.returncode == 0, run.stderr
    verified = json.loads((directory / "export.json").read_text())["verification"]
    assert run.stdout.split()[1] == f"{verified['onnxruntime_perplexity']:.4f}"


def foreign_model() -> bytes:
    """A valid ONNX model that is not this project's: one Identity node."""
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["ids"], ["logits"])], "other",
                                   [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", "l"])],
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, ["b", "l"])])
    opsets = [onnx.helper.make_opsetid("", 21)]
    return onnx.helper.make_model(graph, ir_version=10, opset_imports=opsets).SerializeToString()


def rehash(directory: Path, graph: str) -> None:
    """export.json's SHA-256 of a graph made to match its file, as an edit that passes the checksum would."""
    manifest = json.loads((directory / "export.json").read_text())
    manifest["graphs"][graph]["sha256"] = serve.sha256_bytes((directory / serve.GRAPH_FILES[graph]).read_bytes())
    (directory / "export.json").write_text(json.dumps(manifest))


def external_data(directory: Path) -> None:
    model = onnx.load(directory / "model.onnx")
    onnx.save(model, directory / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    rehash(directory, "sequence")


def other_tokenizer(directory: Path) -> None:
    from iteralite import data

    words = " ".join(f"{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrstuvwx")
    data.train_tokenizer(words * 3, 400).save(str(directory / "tokenizer.json"))
    manifest = json.loads((directory / "export.json").read_text())
    manifest["tokenizer_sha256"] = serve.sha256_bytes((directory / "tokenizer.json").read_bytes())
    (directory / "export.json").write_text(json.dumps(manifest))


def test_a_tokenizer_past_the_models_rows_is_refused_even_where_every_hash_agrees(exported, tmp_path):
    """The graphs' own record of the tokenizer refuses a swapped one first; the rows check stands behind it."""
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(exported[0], directory)
    other_tokenizer(directory)
    with pytest.raises(serve.ServeError, match="tokenizer.json: token ids up to 399, beyond the model's 300 rows"):
        serve.load_tokenizer(directory, json.loads((directory / "export.json").read_text()))


BAD_EXPORTS = {
    "no manifest": (lambda d: (d / "export.json").unlink(), "not an IteraLite export (no export.json"),
    "another ONNX model": (lambda d: (d / "model.onnx").write_bytes(foreign_model()),
                           "model.onnx: not the sequence graph this export wrote (its SHA-256 differs"),
    "another ONNX model, checksum updated": (
        lambda d: ((d / "model.onnx").write_bytes(foreign_model()), rehash(d, "sequence")),
        "model.onnx: not this project's sequence graph"),
    "truncated": (lambda d: (d / "step.onnx").write_bytes((d / "step.onnx").read_bytes()[:1000]),
                  "step.onnx: not the step graph this export wrote"),
    "external data": (external_data, "model.onnx: refers to external data; an export is one file per graph"),
    "another vocabulary": (other_tokenizer, "model.onnx: exported with the tokenizer of SHA-256 "),
    "another manifest": (lambda d: (d / "export.json").write_text('{"format": "other"}'),
                         "export.json: expected format 'iteralite-onnx-v1', found 'other'"),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_a_file_that_is_not_this_projects_export_gets_one_line_naming_it(exported, tmp_path, case):
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(exported[0], directory)
    damage, message = BAD_EXPORTS[case]
    damage(directory)
    run = serve_without_torch(directory, "--prompt", "word1", "--tokens", 2)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "--prompt: empty; give at least one token of text"),
    (["--prompt", "word1 other2 " * 40], "more than the model's max_seq=32"),
    (["--prompt", "word1", "--tokens", "0"], "--tokens: must be at least 1, got 0"),
    (["--prompt", "word1", "--temperature", "-0.5"], "--temperature: must be 0 (greedy) or more, got -0.5"),
    (["--prompt", "word1", "--threads", "0"], "--threads: must be at least 1, got 0"),
    ([], "give one of --prompt TEXT, --perplexity FILE or --http PORT"),
    (["--perplexity", "/nonexistent.txt"], "--perplexity: file not found: /nonexistent.txt"),
])
def test_a_prompt_or_argument_that_does_not_fit_gets_one_line_naming_it(exported, args, message):
    run = serve_without_torch(exported[0], *args)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_graph_is_checked_before_it_is_returned():
    """The builder's output passes onnx's checker with the declared interface (names and dynamic axes)."""
    cfg = SelectiveScanConfig(vocab_size=50, d_model=16, n_layers=1, max_seq=8, d_inner=16, d_state=2, n_experts=2,
                          expert_hidden=16, top_k=1)
    model = SelectiveScan(cfg).eval()
    builder = facet(cfg.architecture, "onnx").Builder
    proto, _ = onnxgraph.build(builder, export.model_tensors(copy.deepcopy(model)), cfg, "step", 0, {})
    names = [i.name for i in proto.graph.input]
    assert names == ["ids", "position", "past_conv.0", "past_ssm.0"]
    assert [o.name for o in proto.graph.output] == ["logits", "present_conv.0", "present_ssm.0"]
    assert [d.dim_param or d.dim_value for d in proto.graph.input[2].type.tensor_type.shape.dim] == ["b", 16, 3]
