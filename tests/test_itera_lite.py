"""The Itera-Lite architecture (iteralite/architectures/itera_lite): its sizes, its scan, its modes, its groups, its
INT4 and export, and the registry's names."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iteralite import analysis, export, quant, study
from iteralite.architectures.configs import config_from_dict
from iteralite.architectures.itera_lite.config import Config as IteraLiteConfig
from iteralite.architectures.itera_lite.config import parameter_count
from iteralite.architectures.itera_lite.model import Model as IteraLiteModel
from iteralite.architectures.itera_lite.model import sequential_scan, shared_state_scan
from iteralite.checkpoint import load_checkpoint, save_checkpoint
from iteralite.layers import count_parameters
from iteralite.pruning import planner, surgery
from iteralite.pruning.model_groups import build_groups

KEEP = ["A_log", "D", "conv1d", "norm", "bias"]


@pytest.fixture
def small():
    """Every kind of block: an MoE layer, feed-forward layers, two expert sizes after pruning can differ."""
    torch.manual_seed(0)
    cfg = IteraLiteConfig(vocab_size=120, d_model=32, n_layers=3, max_seq=24, d_inner=48, d_state=4, n_experts=3,
                          expert_hidden=16, top_k=2, moe_layers=[1])
    return IteraLiteModel(cfg).eval()


def test_the_tiny_config_has_1886496_parameters_and_their_breakdown():
    """The Itera-Lite repository's tiny config (vocab 8000, d 128, 4 layers, MoE on 1 and 3): 1,886,496 parameters,
    counted by the model and by the config's arithmetic; by category, the token table 1,024,000 (54.3%), positions
    16,384."""
    cfg = IteraLiteConfig()
    assert cfg.moe_layers == [1, 3]
    with torch.device("meta"):
        model = IteraLiteModel(cfg)
    assert count_parameters(model) == parameter_count(cfg) == 1_886_496
    rows = {r["category"]: r for r in analysis.category_breakdown(model)}
    assert rows["embeddings"]["params"] == 1_024_000 and round(rows["embeddings"]["percent"], 1) == 54.3
    assert rows["position embeddings"]["params"] == 16_384 and rows["LM head (tied)"]["params"] == 0
    assert sum(r["params"] for r in rows.values()) == 1_886_496


def test_the_state_dict_keeps_the_itera_lite_names():
    names = set(IteraLiteModel(IteraLiteConfig(vocab_size=50, d_model=8, d_inner=16, max_seq=8)).state_dict())
    assert {"embedding.weight", "position_embedding.weight", "norm.weight", "norm.bias",
            "layers.0.ssm.in_proj.weight", "layers.0.ssm.conv1d.weight", "layers.0.ssm.ssm.A_log",
            "layers.0.ssm.ssm.delta_proj.bias", "layers.0.ssm.out_proj.weight", "layers.0.ssm.norm.bias",
            "layers.0.moe.norm.weight", "layers.0.moe.ffn.w1.weight", "layers.1.moe.layer.router.gate.weight",
            "layers.1.moe.layer.experts.3.w2.weight", "layers.1.moe.layer.norm.bias"} <= names
    assert not any(n.endswith(".bias") and ".experts." in n for n in names)  # experts have no biases


@pytest.mark.parametrize("length, chunk", [(37, 8), (16, 64), (64, 16)])
def test_the_closed_form_scan_equals_the_sequential_one_in_values_and_gradients(length, chunk):
    torch.manual_seed(length)
    b, di, n = 3, 10, 4
    inputs = [torch.randn(b, length, di), F.softplus(torch.randn(b, length)), -torch.rand(n) * 2 - 0.1,
              torch.randn(n, di), torch.randn(di, n), torch.randn(di), torch.randn(b, n)]
    leaves = [t.double().requires_grad_() for t in inputs]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    y, h = shared_state_scan(*leaves[:6], h0=leaves[6], chunk=chunk)
    y_ref, h_ref = sequential_scan(*twins)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(y)
    ((y * weights).sum() + h.sum()).backward()
    ((y_ref * weights).sum() + h_ref.sum()).backward()
    for fast, slow in zip(leaves, twins):
        torch.testing.assert_close(fast.grad, slow.grad, rtol=1e-9, atol=1e-9)


def test_the_step_mode_equals_the_parallel_forward(small):
    ids = torch.randint(0, 120, (2, 24))
    with torch.no_grad():
        logits, _ = small(ids)
        cache, stepped = small.empty_cache(2), []
        for position in range(24):
            step_logits, cache = small.step(ids[:, position], position, cache)
            stepped.append(step_logits)
    torch.testing.assert_close(torch.stack(stepped, 1), logits, rtol=0, atol=2e-5)
    assert cache[0][1].shape == (2, 4)  # one state of d_state entries, shared by the channels


def test_the_balance_loss_is_the_squared_coefficient_of_variation_summed_over_moe_layers(small):
    """Itera-Lite's load balance: (std / mean)^2 of the mean router probabilities, per MoE layer, summed;
    feed-forward layers add nothing."""
    ids = torch.randint(0, 120, (2, 24))
    captured = {}
    moe = small.layers[1]["moe"].layer
    moe.norm.register_forward_hook(lambda _m, _i, out: captured.setdefault("x", out.reshape(-1, 32)))
    _, balance = small(ids)
    probs = F.softmax(moe.router.gate(captured["x"]), -1).mean(0)
    expected = (probs.std() / (probs.mean() + 1e-6)) ** 2
    torch.testing.assert_close(balance, expected)


def test_a_checkpoint_and_an_int4_file_rebuild_the_itera_lite_architecture(small, tmp_path):
    ids = torch.randint(0, 120, (2, 24))
    save_checkpoint(tmp_path / "m.pt", small, "sha")
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(loaded, IteraLiteModel) and meta["config"]["architecture"] == "itera_lite"
    torch.testing.assert_close(loaded(ids)[0], small(ids)[0], rtol=0, atol=0)
    quant.save_quantized(tmp_path / "q.pt", quant.quantize_model(small, 32, KEEP, "sha")[0])
    int4 = quant.load_quantized(tmp_path / "q.pt", path_mode="unpacked")
    assert isinstance(int4, IteraLiteModel) and isinstance(int4.token_embedding, quant.Int4Embedding)
    # it computes the float model with its 4-bit weights dequantized and its other tensors in float16
    rounded = copy.deepcopy(small)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
        modules = dict(rounded.named_modules())
        for name, module in int4.named_modules():
            if isinstance(module, quant.Int4Linear):
                modules[name].weight.copy_(module.unpacked)
        torch.testing.assert_close(int4(ids)[0], rounded(ids)[0], rtol=0, atol=1e-5)


def kept_half(model):
    """Every other channel of every group, the first expert of the MoE layer, every block."""
    kept = {}
    for g in build_groups(model.cfg):
        if g.kind in ("ssm_blocks", "moe_blocks"):
            kept[g.name] = torch.arange(g.size)
        elif g.kind == "experts":
            kept[g.name] = torch.tensor([0, 2])
        else:
            kept[g.name] = torch.arange(0, g.size, 2)
    return kept


def only(model, kind: str, kept_all: dict) -> dict:
    """The kept indices of `kind`'s groups; every channel of every other group."""
    return {g.name: kept_all[g.name] if g.kind == kind else torch.arange(g.size) for g in build_groups(model.cfg)}


@pytest.mark.parametrize("kind", ["expert_hidden", "experts"])
def test_pruning_hidden_units_or_experts_equals_masking_them(small, kind):
    kept = only(small, kind, kept_half(small))
    ids = torch.randint(0, 120, (2, 24))
    pruned = surgery.prune(small, kept)
    assert count_parameters(pruned) == parameter_count(pruned.cfg) < count_parameters(small)
    torch.testing.assert_close(pruned(ids)[0], surgery.masked_model(small, kept)(ids)[0], rtol=0, atol=2e-5)


def test_pruning_a_whole_block_equals_skipping_it(small):
    kept = {g.name: torch.arange(g.size) for g in build_groups(small.cfg)}
    kept["moe_blocks"] = torch.tensor([0, 2])  # the MoE block of layer 1 goes
    kept["ssm_blocks"] = torch.tensor([1, 2])
    pruned = surgery.prune(small, kept)
    assert pruned.cfg.layer_expert_hidden[1] == [] and pruned.cfg.layer_d_inner[0] == 0
    ids = torch.randint(0, 120, (2, 24))
    torch.testing.assert_close(pruned(ids)[0], surgery.masked_model(small, kept)(ids)[0], rtol=0, atol=2e-5)


def test_pruning_ssm_channels_is_masking_them_with_the_step_size_averaged_over_the_survivors(small):
    """Not equal to zeroing: a zeroed channel still adds softplus(0) to the mean step size. Averaging over the
    kept channels only makes the masked model the pruned one."""
    with torch.no_grad():  # step sizes far from softplus(0), as trained ones are
        for layer in small.layers:
            layer["ssm"].ssm.delta_proj.bias.normal_(0, 2)
    kept = only(small, "ssm_channels", kept_half(small))
    ids = torch.randint(0, 120, (2, 24))
    pruned, masked = surgery.prune(small, kept), surgery.masked_model(small, kept)
    assert (pruned(ids)[0] - masked(ids)[0]).abs().max() > 1e-3
    for i, layer in enumerate(masked.layers):
        channels = kept[f"layer{i}.ssm_channels"]
        kernel = layer["ssm"].ssm
        kernel.step_size = lambda x, k=kernel, c=channels: F.softplus(k.delta_proj(x))[..., c].mean(-1)
    torch.testing.assert_close(pruned(ids)[0], masked(ids)[0], rtol=0, atol=2e-5)


def test_pruning_width_is_masking_it_with_every_layer_norm_over_the_survivors(small):
    """Not equal to zeroing: a LayerNorm's mean and variance take the zeroed channels in. Normalising over the
    kept channels only makes the masked model the pruned one."""
    kept = only(small, "width", kept_half(small))
    width = kept["width"]
    ids = torch.randint(0, 120, (2, 24))
    pruned, masked = surgery.prune(small, kept), surgery.masked_model(small, kept)
    assert (pruned(ids)[0] - masked(ids)[0]).abs().max() > 1e-3

    def norm_over_survivors(norm):
        def forward(x):
            out = torch.zeros_like(x)
            out[..., width] = F.layer_norm(x[..., width], (len(width),), norm.weight[width], norm.bias[width],
                                           norm.eps)
            return out
        return forward

    for module in masked.modules():
        if isinstance(module, torch.nn.LayerNorm) and module.normalized_shape == (32,):
            module.forward = norm_over_survivors(module)
    torch.testing.assert_close(pruned(ids)[0], masked(ids)[0], rtol=0, atol=2e-5)


def test_the_planner_meets_40_percent_and_says_what_the_plans_allocation_removes():
    cfg = IteraLiteConfig()
    bounds = {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5}
    round_to = {"width": 32, "ssm_channels": 32, "expert_hidden": 16}
    plan = planner.plan_target(cfg, 0.4, bounds, round_to, {"ssm_channels": 1.5})
    counts = planner.plan_counts(cfg, plan["ratios"], round_to)
    assert round(plan["removed_fraction"], 4) == 0.4008  # width 25%, SSM channels 50%: 1,130,464 parameters
    assert 1 - parameter_count(planner.pruned_config(cfg, counts)) / 1_886_496 == pytest.approx(
        plan["removed_fraction"])
    assert "layer0.ffn.hidden" in counts and "layer0.experts" not in counts  # a feed-forward layer has no router
    preset = planner.plan_target(cfg, "plan", bounds, round_to)
    assert round(preset["removed_fraction"], 3) == 0.159  # the preset removes far less than 40%
    with pytest.raises(planner.PlanError, match=r"at most \d+\.\d% can be removed.*pruning\.bounds\.width"):
        planner.plan_target(cfg, 0.4, {**bounds, "width": 0.0}, round_to)


def base_config() -> dict:
    import yaml

    with open(study.SCHEMA.replace("schema.yaml", "config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    return config


@pytest.mark.parametrize("model, message", [
    ({"moe_layers": [1, 4]}, "model.moe_layers: [4] lie outside the layers 0..3 (model.n_layers=4)"),
    ({"top_k": 5}, "model.top_k=5 exceeds model.n_experts=4"),
    ({"d_state": 0}, "model.d_state must be a positive integer, got 0"),
    ({"architecture": "selective_scan", "moe_layers": [1]},
     "model.moe_layers is not a size of model.architecture selective_scan"),
    ({"architecture": "reference"}, "model.architecture: 'reference' is now called 'itera_lite'"),
    ({"architecture": "project"}, "model.architecture: 'project' is now called 'selective_scan'"),
    ({"architecture": "reference", "checkpoint": "itera.pt"}, "model.architecture: 'reference' is now called"),
    ({"architecture": "mamba"}, "model.architecture must be one of ['itera_lite', 'selective_scan'], got 'mamba'"),
])
def test_a_model_section_that_cannot_be_built_is_refused_naming_the_key(model, message):
    config = base_config()
    config["model"] |= model
    with pytest.raises(study.ConfigError) as err:
        study.validate(config)
    assert str(err.value).startswith("model.") and message in str(err.value)


def test_the_default_config_builds_the_plans_model():
    cfg = study.model_config(base_config())
    assert isinstance(cfg, IteraLiteConfig) and parameter_count(cfg) == 1_886_496
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("saved, architecture", [
    ({"architecture": "reference"}, "itera_lite"), ({"architecture": "project"}, "selective_scan"),
    ({}, "selective_scan"),  # checkpoints written before configs named their architecture
])
def test_a_checkpoint_config_under_a_former_name_still_loads(saved, architecture):
    values = {"vocab_size": 50, "d_model": 8, "n_layers": 2, "max_seq": 8, "d_inner": 16, **saved}
    cfg = config_from_dict(values)
    assert cfg.architecture == architecture and cfg.to_dict()["architecture"] == architecture


@pytest.mark.parametrize("int4", [False, True])
def test_the_export_reproduces_the_itera_lite_architecture(small, tmp_path, int4):
    """Both graphs against torch (logits, the shared state), by the export's own verification and here."""
    tokens = torch.randint(0, 120, (2000,), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "m.pt"
    if int4:
        quant.save_quantized(path, quant.quantize_model(small, 16, KEEP, "sha")[0])
    else:
        save_checkpoint(path, small, "sha")
    files, manifest = export.export("m", str(path), tokens, "sha", export.ExportSettings(4, 1000))
    assert manifest["interface"]["step"]["inputs"]["past_ssm.0"] == ["b", 4]
    model = quant.load_model(str(path), export.TORCH_INT4_PATH)
    runtime = export.serve.OnnxModel.from_bytes(files, manifest)
    ids = tokens[:48].reshape(2, 24)
    with torch.no_grad():
        expected, _ = model(ids)
    logits, state = runtime.prefill(ids.numpy())
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
    assert manifest["verification"]["perplexity_relative_diff"] <= 1e-3
    assert math.isfinite(manifest["verification"]["onnxruntime_perplexity"])
    assert set(state) == {f"past_{kind}.{i}" for kind in ("conv", "ssm") for i in range(3)}


def test_a_pruned_itera_lite_model_keeps_its_architecture_through_copy(small):
    pruned = surgery.prune(small, kept_half(small))
    assert isinstance(pruned, IteraLiteModel) and pruned.cfg.moe_layers == [1]
    assert pruned.cfg.layer_expert_hidden == [[8], [8, 8], [8]] and pruned.cfg.d_model == 16
    assert copy.deepcopy(pruned).cfg == pruned.cfg


def test_an_export_with_an_imported_word_level_tokenizer_is_served_without_torch(small, tmp_path):
    """The export stage carries the study's tokenizer (here an Itera-Lite word-level one, 24 ids in a table of
    120 rows); serving in a process where `import torch` fails generates what the torch model generates, greedily."""
    from test_export import outputs, serve_without_torch

    from iteralite.architectures.itera_lite.tokenizer import itera_lite_tokenizer
    from iteralite.artifacts import save_torch
    from iteralite.provenance import file_sha256
    from iteralite.stages import export as export_stage

    words = ["<PAD>", "<UNK>", "<BOS>", "<EOS>", *(f"w{i}" for i in range(20))]
    tokenizer = itera_lite_tokenizer({w: i for i, w in enumerate(words)}, "word")
    tokenizer_path = tmp_path / "tokenizer.json"
    tokenizer_path.write_text(tokenizer.to_str())
    text = " ".join(f"w{(i * 7) % 20} w{i % 13}" for i in range(1500))
    save_torch(tmp_path / "tokens.pt", {"tokens": {"test": torch.tensor(tokenizer.encode(text).ids)},
                                        "tokenizer_sha256": file_sha256(tokenizer_path)})
    save_checkpoint(tmp_path / "m.pt", small, "sha")
    directory = tmp_path / "export"
    export_stage.export("baseline/dense", str(tmp_path / "m.pt"), str(tmp_path / "tokens.pt"), str(tokenizer_path),
                        export.ExportSettings(4, 1000), outputs(directory))
    run = serve_without_torch(directory, "--prompt", "W3 w5 unknown", "--tokens", 6, "--temperature", 0)
    assert run.returncode == 0, run.stderr
    ids = tokenizer.encode("W3 w5 unknown").ids
    assert ids == [7, 9, 1]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(small(torch.tensor([ids]))[0][0, -1].argmax()))
    assert run.stdout.strip() == " ".join(words[i] if i < len(words) else "<UNK>" for i in ids)  # as that code decodes
