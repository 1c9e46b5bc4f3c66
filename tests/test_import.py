"""Importing a user's Itera-Lite checkpoint and tokenizer (iteralite/architectures/itera_lite/convert.py,
tokenizer.py)."""

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from iteralite import study
from iteralite.architectures.itera_lite import convert, layouts
from iteralite.architectures.itera_lite.config import Config as IteraLiteConfig
from iteralite.architectures.itera_lite.convert import read_user_checkpoint
from iteralite.architectures.itera_lite.model import Model as IteraLiteModel
from iteralite.architectures.itera_lite.tokenizer import TokenizerError, read_tokenizer
from iteralite.artifacts import CheckpointError

DATA = Path(__file__).parent / "data"
ITERA_CONFIG = {"vocab_size": 90, "hidden_size": 32, "num_layers": 3, "ssm_state_size": 4, "ssm_conv_kernel": 4,
                "ssm_expand_factor": 2, "num_experts": 3, "expert_size": 16, "top_k_experts": 2, "moe_layers": [1],
                "load_balance_loss_weight": 0.01, "max_seq_length": 128, "dropout": 0.1, "layer_norm_eps": 1e-5,
                "use_flash_attn": False, "gradient_checkpointing": False}


@pytest.fixture
def original():
    """A model of the Itera-Lite architecture at Itera-Lite's sizes above, with trained-looking LayerNorms."""
    torch.manual_seed(0)
    cfg = IteraLiteConfig(vocab_size=90, d_model=32, n_layers=3, max_seq=128, d_inner=64, d_state=4, n_experts=3,
                          expert_hidden=16, top_k=2, moe_layers=[1])
    model = IteraLiteModel(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    return model


def as_itera_lite(model) -> dict:
    return layouts.saved_state(model)


def imported(blob, tmp_path, top_k=None):
    path = tmp_path / "itera.pt"
    torch.save(blob, path)
    return read_user_checkpoint(path, top_k)


IDS = torch.randint(0, 90, (2, 40), generator=torch.Generator().manual_seed(1))


def test_a_dict_with_config_imports_and_computes_what_the_model_computes(original, tmp_path):
    model, found = imported({"model_state_dict": as_itera_lite(original), "config": ITERA_CONFIG,
                             "compression_ratio": 1.0}, tmp_path)
    assert found["format"] == "Itera-Lite" and found["layout"][0] == "dict with model_state_dict and config"
    assert model.cfg == original.cfg and "top_k_experts" in found["inferred"]["top_k"]
    torch.testing.assert_close(model(IDS)[0], original(IDS)[0], rtol=0, atol=0)


def test_a_bare_state_dict_with_moe_moe_keys_imports_with_top_k_from_the_study(original, tmp_path):
    state = {k.replace(".moe.layer.", ".moe.moe."): v for k, v in as_itera_lite(original).items()}
    model, found = imported(state, tmp_path, top_k=2)
    assert "MoE keys .moe.moe. (read as .moe.layer.)" in found["layout"] and "study's model.top_k" in \
        found["inferred"]["top_k"]
    assert model.cfg.moe_layers == [1] and model.cfg.layer_expert_hidden == [[16], [16, 16, 16], [16]]
    torch.testing.assert_close(model(IDS)[0], original(IDS)[0], rtol=0, atol=0)


# layout -> (what the import reports finding, the largest logit difference from what the Itera-Lite code computes on
# the file, as a fraction of the logits' spread; the least share of positions where both pick the same next token).
# Float files compute what that code computes. Quantized ones differ by what the import cannot hold: the int8
# activations of torch's dynamic quantization, and a quantized LM head (the model ties its head to the float table).
# The figures of a trained model: `python tools/itera_lite_files.py fidelity`, docs/import.md.
FIDELITY = {
    "trainer": ("dict with model_state_dict", 1e-5, 1.0),
    "distilled": ("dict with model_state_dict", 1e-5, 1.0),
    "quality": ("dict with model_state_dict and config", 1e-5, 1.0),
    "production": ("dict with model_state_dict and a config without model keys (a training config: ignored)", 1e-5,
                   1.0),
    "fp16": ("float16 tensors (to float32)", 1e-5, 1.0),
    "int4-simulated": ("dict with model_state_dict and config (a pickled IteraLiteConfig, read as its fields)", 1e-5,
                       1.0),
    "mixed-precision": ("int8 QuantizedLinear weights with a scale per row (dequantized)", 1e-5, 1.0),
    "int8": ("int8 dynamically quantized Linears (dequantized)", 0.1, 0.9),
    "nf4": ("bitsandbytes nf4 4-bit Linears (dequantized)", 0.1, 0.9),
}


@pytest.mark.parametrize("layout", sorted(FIDELITY))
def test_every_file_the_itera_lite_code_writes_imports_and_computes_what_that_code_computes(original, tmp_path,
                                                                                           layout):
    written = layouts.WRITERS[layout](original)
    layouts.save(written, tmp_path / "itera.pt")
    model, found = read_user_checkpoint(tmp_path / "itera.pt", 2)
    found_text, tolerance, agreement = FIDELITY[layout]
    assert found["format"] == "Itera-Lite" and found_text in found["layout"] and found["warnings"] == []
    assert model.cfg == original.cfg
    with torch.no_grad():
        theirs, ours = written.forward(IDS), model(IDS)[0]
    spread = (theirs.amax(-1) - theirs.amin(-1)).mean()
    assert (ours - theirs).abs().max() <= tolerance * spread
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= agreement


def test_a_file_whose_moe_weights_the_itera_lite_scripts_dropped_imports_without_them_and_says_why(original,
                                                                                                   tmp_path):
    """phase7_prune.py's file: routers of 0 experts, their norms at the initial values; the Itera-Lite code cannot
    run it. The import is the model without those blocks, and its warning says what happened."""
    written = layouts.without_experts(original)
    layouts.save(written, tmp_path / "itera.pt")
    model, found = read_user_checkpoint(tmp_path / "itera.pt", 2)
    assert written.forward is None and "moe" not in model.layers[1]
    assert found["warnings"] == ["layer 1: its router has 0 experts, so its trained MoE weights are not in the file "
                                 "(the Itera-Lite pruning and mixed-precision scripts count experts under .moe.moe., "
                                 "find 0 and load with strict=False, which drops them; that code cannot run such a "
                                 "layer); the import leaves the layer without its MoE block"]
    expected = copy.deepcopy(original)
    del expected.layers[1]["moe"]
    torch.testing.assert_close(model(IDS)[0], expected(IDS)[0], rtol=0, atol=0)


def test_untrained_norms_a_head_apart_from_the_table_and_the_top_k_source_are_reported(original, tmp_path):
    state = as_itera_lite(original)
    state["layers.2.ssm.norm.weight"], state["layers.2.ssm.norm.bias"] = torch.ones(32), torch.zeros(32)
    state["lm_head.weight"] = state["embedding.weight"] + 0.5
    config = {k: v for k, v in ITERA_CONFIG.items() if k != "top_k_experts"}
    model, found = imported({"model_state_dict": state, "config": config}, tmp_path, top_k=2)
    assert found["warnings"] == [
        "lm_head.weight differs from embedding.weight (max difference 0.5): the Itera-Lite model ties them, so the "
        "import's head reads the table and the file's head is dropped",
        "layers.2.ssm.norm: weight 1 and bias 0 exactly, their initial values: untrained weights in the baseline"]
    assert found["inferred"]["top_k"] == "2 from the study's model.top_k (the file's config has no top_k_experts)"


def test_a_shorter_window_is_the_first_positions_and_exact(original):
    ids = IDS[:, :24]
    expected = original(ids)[0]
    shortened = convert.with_window(copy.deepcopy(original), 24)
    assert shortened.cfg.max_seq == 24 and shortened.position_embedding.weight.shape == (24, 32)
    torch.testing.assert_close(shortened(ids)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    (lambda s, c: s.__setitem__("layers.0.ssm.conv1d.weight", torch.zeros(48, 1, 4)),
     "its tensors contradict each other: size mismatch for layers.0.ssm.conv1d.weight"),
    (lambda s, c: c.__setitem__("hidden_size", 64), "its config says hidden_size=64, its tensors give 32"),
    (lambda s, c: c.__setitem__("moe_layers", [1, 2]), "its config says moe_layers=[1, 2], its tensors have routers"),
    (lambda s, c: c.__setitem__("top_k_experts", 4), "top_k=4 (the file's config (top_k_experts)) exceeds the 3 "
                                                     "experts of layer 1"),
    (lambda s, c: s.pop("layers.2.ssm.ssm.A_log"), "its tensors contradict each other: Missing key(s)"),
    (lambda s, c: c.__setitem__("top_k_experts", "2"), "its config's top_k_experts is '2', not an integer"),
    (lambda s, c: s.__setitem__("layers.0.ssm.ssm.D", torch.zeros(64, dtype=torch.int64)),
     "layers.0.ssm.ssm.D is a Tensor of torch.int64, not a floating-point tensor"),
    (lambda s, c: s["layers.2.moe.ffn.w1.weight"].__setitem__((3, 4), float("nan")),
     "layers.2.moe.ffn.w1.weight holds NaN or infinite values"),
    (lambda s, c: c.__setitem__("moe_layers", "1"), "its config's moe_layers is '1', not a list of layer numbers"),
])
def test_a_file_whose_tensors_or_config_do_not_fit_is_refused_naming_what(original, tmp_path, change, message):
    state, config = as_itera_lite(original), dict(ITERA_CONFIG)
    change(state, config)
    with pytest.raises(CheckpointError) as err:
        imported({"model_state_dict": state, "config": config}, tmp_path)
    assert str(err.value).startswith(f"model.checkpoint {tmp_path / 'itera.pt'}") and message in str(err.value)


def nf4_file(original, change) -> dict:
    blob = layouts.nf4(original).blob
    change(blob["model_state_dict"])
    return blob


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__("layers.0.ssm.in_proj.weight", s["layers.0.ssm.in_proj.weight"][:-1]),
     "layers.0.ssm.in_proj.weight, a bitsandbytes nf4 weight: (2047, 1) packed bytes do not hold shape [128, 32]"),
    (lambda s: s.__setitem__("layers.0.ssm.in_proj.weight.absmax", s["layers.0.ssm.in_proj.weight.absmax"][:-1]),
     "its absmax is not one value per block of 64"),
    (lambda s: s.__setitem__("layers.0.ssm.in_proj.weight.quant_state.bitsandbytes__nf4",
                             torch.tensor(list(b'{"shape": [128, 32]}'), dtype=torch.uint8)),
     "its quant state is not JSON with shape and blocksize"),
    (lambda s: s.pop("layers.0.ssm.in_proj.weight.nested_quant_map"),
     "its double-quantized absmax lacks a nested_quant_map of 256 values"),
])
def test_a_4bit_weight_whose_parts_disagree_is_refused_before_it_is_dequantized(original, tmp_path, change,
                                                                                message):
    with pytest.raises(CheckpointError) as err:
        imported(nf4_file(original, change), tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_weights_written_by_bitsandbytes_itself_dequantize_as_bitsandbytes_does(double_quant):
    """tests/data/bitsandbytes_nf4.pt: Linear4bit layers bitsandbytes quantized and serialised, beside its own
    dequantization (tools/bitsandbytes_layout.py wrote it)."""
    written = torch.load(DATA / "bitsandbytes_nf4.pt", weights_only=True)[f"double_quant_{double_quant}"]
    state = {f"layers.0.ssm.in_proj.{key}": value for key, value in written["state_dict"].items()}
    weight, kind = convert._four_bit(state, "layers.0.ssm.in_proj.weight", "file.pt")
    assert kind == "nf4" and weight.shape == (96, 200)
    torch.testing.assert_close(weight, written["dequantized"], rtol=0, atol=0)


def test_a_quantized_linear_without_its_row_scales_is_refused(original, tmp_path):
    blob = layouts.mixed_precision(original).blob
    blob["model_state_dict"]["layers.1.ssm.out_proj.scale"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"layers.1.ssm.out_proj.weight_int8 needs a scale of 32 values \(one "
                                              r"per row\) beside it, layers.1.ssm.out_proj.scale"):
        imported(blob, tmp_path)


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("blob, message", [
    ({"weights": torch.zeros(2)}, "is neither an IteraLite checkpoint (format iteralite-checkpoint-v1) nor an "
                                  "Itera-Lite one"),
    ({"model_state_dict": {"embedding.weight": torch.zeros(4, 2)}, "hook": RunsCode()},
     "holds a pickled print, which a weights-only load does not build (building it would run code"),
])
def test_a_foreign_file_or_one_that_would_run_code_is_refused(tmp_path, blob, message, capfd):
    path = tmp_path / "itera.pt"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="model.checkpoint") as err:
        read_user_checkpoint(path, 2)
    assert message in str(err.value) and "this ran" not in capfd.readouterr().out


WORDS = {"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3, "it": 4, "is": 5, "a": 6, "truth": 7, "émile,": 8,
         "i̇stanbul": 9}
TEXT = "It is a TRUTH\tuniversally\u2003acknowledged, a\x1ctruth\u00a0Émile, İstanbul\n\nit\x85is"


def test_word_and_char_level_tokenizers_encode_as_the_itera_lite_code_does(tmp_path):
    """Word level: Python's text.lower().split(), unknown words -> <UNK> (1); char level: list(text)."""
    word = tmp_path / "word.json"
    word.write_text(json.dumps({"vocab_size": 2000, "token_to_id": WORDS, "id_to_token": {}}))
    tokenizer, found = read_tokenizer(word)
    assert found == "Itera-Lite dataset loader vocabulary, word level"
    assert tokenizer.encode(TEXT).ids == [WORDS.get(w, 1) for w in TEXT.lower().split()]
    chars = {"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3} | {c: 4 + i for i, c in enumerate(sorted(set(TEXT[:30])))}
    char = tmp_path / "char.json"
    char.write_text(json.dumps({"token2id": chars, "id2token": {}, "vocab_size": 8000, "level": "char"}))
    tokenizer, found = read_tokenizer(char)
    assert found == "Itera-Lite SimpleTokenizer, char level"
    assert tokenizer.encode(TEXT).ids == [chars.get(c, 1) for c in TEXT]
    assert tokenizer.decode(tokenizer.encode(TEXT[:30]).ids) == TEXT[:30]


def test_the_one_encoding_that_differs_is_a_word_final_capital_sigma(tmp_path):
    word = tmp_path / "word.json"
    word.write_text(json.dumps({"token2id": {"<UNK>": 1, "οδος": 4, "οδοσ": 5}, "id2token": {}, "level": "word",
                                "vocab_size": 10}))
    assert "ΟΔΟΣ".lower().split() == ["οδος"] and read_tokenizer(word)[0].encode("ΟΔΟΣ").ids == [5]


@pytest.mark.parametrize("content, message", [
    ('{"words": {"a": 1}}', "unknown tokenizer format (keys ['words'])"),
    ('{"token_to_id": {"<UNK>": 1, "a": -4}}', "its vocabulary must map token strings to ids from 0 to 1048575"),
    ('{"token_to_id": {"<UNK>": 1, "a": 1}}', "two tokens share an id"),
    ('{"token_to_id": {"<UNK>": 1, "a": 5000000}}', "its vocabulary must map token strings to ids from 0 to"),
    ("not json", "is not JSON"),
    ('{"token2id": {"a": 4}, "level": "word"}', "its vocabulary has no <UNK> token"),
    ('{"token2id": {"<UNK>": 1}, "level": "bytes"}', "level 'bytes' is neither 'char' nor 'word'"),
])
def test_a_tokenizer_file_of_an_unknown_format_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content)
    with pytest.raises(TokenizerError) as err:
        read_tokenizer(path)
    assert str(err.value).startswith(f"tokenizer.path {path}") and message in str(err.value)


def test_a_three_million_word_tokenizer_is_refused_before_a_tokenizer_is_built(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    path.write_text('{"token_to_id": {"<UNK>": 1, ' + ", ".join(f'"w{i}": {i + 2}' for i in range(3_000_000)) + "}}")
    monkeypatch.setattr("iteralite.architectures.itera_lite.tokenizer.itera_lite_tokenizer", None)  # never reached
    with pytest.raises(TokenizerError, match="its vocabulary must map token strings to ids from 0 to 1048575"):
        read_tokenizer(path)


def study_config(tmp_path, original, tokens: dict, **model) -> dict:
    with open(study.SCHEMA.replace("schema.yaml", "config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    checkpoint, tokenizer = tmp_path / "itera.pt", tmp_path / "tokenizer.json"
    torch.save({"model_state_dict": as_itera_lite(original), "config": ITERA_CONFIG}, checkpoint)
    tokenizer.write_text(json.dumps({"vocab_size": 90, "token_to_id": tokens, "id_to_token": {}}))
    config["model"] |= {"checkpoint": str(checkpoint), **model}
    config["tokenizer"]["path"] = str(tokenizer)
    config["quantize"]["group_size"] = 32
    return config


def test_an_imported_model_is_the_studys_model_and_is_checked_before_any_job(original, tmp_path):
    config = study_config(tmp_path, original, WORDS)
    study.validate(config)
    assert study.model_config(config) == dataclasses.replace(original.cfg, vocab_reachable=10)  # WORDS' ids 0..9
    config["model"]["max_seq"], config["benchmark"]["contexts"] = 64, [16, 64]  # the file has 128 positions
    assert study.model_config(config).max_seq == 64
    config["model"]["max_seq"] = 512
    assert study.model_config(config).max_seq == 128
    config["tokenizer"]["path"] = None
    with pytest.raises(study.ConfigError, match="is an Itera-Lite checkpoint: tokenizer.path must name the tokenizer"):
        study.validate(config)


@pytest.mark.parametrize("tokens, edit, message", [
    ({**WORDS, "far": 95}, {}, "ids up to 95, beyond the 90 rows of model.checkpoint"),
    (WORDS, {"benchmark": {"contexts": [16, 256]}}, "its window of 128 positions (the smaller of model.max_seq and "
                                                     "the file's 128) is shorter than the study's windows need"),
    (WORDS, {"model": {"max_seq": 64}}, "its window of 64 positions (the smaller of model.max_seq and the file's "
                                        "128) is shorter than the study's windows need (benchmark.contexts up to 128)"),
])
def test_a_tokenizer_or_windows_that_do_not_fit_the_checkpoint_are_refused(original, tmp_path, tokens, edit,
                                                                          message):
    config = study_config(tmp_path, original, tokens)
    for section, values in edit.items():
        config[section] |= values
    with pytest.raises(study.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        study.validate(config)


def test_the_projects_own_checkpoints_keep_loading(tiny_model, tmp_path):
    from iteralite.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "own.pt", tiny_model, "sha")
    model, found = read_user_checkpoint(tmp_path / "own.pt", None)
    assert found["format"] == "iteralite-checkpoint-v1" and found["tokenizer_sha256"] == "sha"
    assert pickle.dumps(model.cfg) == pickle.dumps(tiny_model.cfg)


@pytest.mark.parametrize("architecture", ["selective_scan", "itera_lite"])
def test_rows_no_token_reaches_are_pruned_leaving_every_reachable_logit_and_lowering_perplexity(architecture):
    """A table of 90 rows of which a tokenizer reaches 10: the vocab group removes the 80 others, in one pruned model
    with the other groups; the reachable logits stay exactly (the head is a matmul per row), the perplexity of any
    reachable targets can only fall (the softmax loses terms), and the planner counts the rows it removes."""
    from iteralite.architectures.configs import config_from_dict
    from iteralite.architectures.models import build_model
    from iteralite.layers import count_parameters
    from iteralite.pruning import planner, surgery
    from iteralite.pruning.model_groups import build_groups

    torch.manual_seed(0)
    sizes = {"architecture": architecture, "vocab_size": 90, "d_model": 32, "n_layers": 2, "max_seq": 16,
             "d_inner": 32, "d_state": 4, "n_experts": 2, "expert_hidden": 16, "top_k": 2, "vocab_reachable": 10}
    model = build_model(config_from_dict(sizes)).eval()
    groups = {g.name: g for g in build_groups(model.cfg)}
    assert groups["vocab"].size == 90 and groups["vocab"].reachable == 10
    kept = {name: torch.arange(g.size) for name, g in groups.items()}
    kept["vocab"] = torch.arange(10)
    pruned = surgery.prune(model, kept)
    assert pruned.cfg.vocab_size == 10 and pruned.cfg.reachable_rows == 10 and "vocab" not in {
        g.name for g in build_groups(pruned.cfg)}
    assert count_parameters(model) - count_parameters(pruned) == 80 * 32
    ids = torch.randint(0, 10, (2, 17))
    with torch.no_grad():
        dense_logits, pruned_logits = model(ids[:, :-1])[0], pruned(ids[:, :-1])[0]
    torch.testing.assert_close(pruned_logits, dense_logits[..., :10], rtol=0, atol=1e-6)
    torch.testing.assert_close(surgery.masked_model(model, kept)(ids[:, :-1])[0][..., :10], pruned_logits)
    loss = torch.nn.functional.cross_entropy
    assert loss(pruned_logits.flatten(0, 1), ids[:, 1:].flatten()) < loss(dense_logits.flatten(0, 1),
                                                                          ids[:, 1:].flatten())
    # distilled from the unpruned model, it reads the teacher's reachable rows: the two agree, nothing to learn
    from iteralite.train import TrainConfig, batch_losses

    distill = TrainConfig(distill_weight=1.0, distill_temperature=2.0)
    assert batch_losses(pruned, ids, distill, teacher=model)[0].item() == pytest.approx(0.0, abs=1e-6)
    plan = planner.plan_target(model.cfg, 0.4, {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75},
                               {}, None)
    counts = planner.plan_counts(model.cfg, plan["ratios"], {})
    assert counts["vocab"] == 10 and plan["removed_fraction"] >= 0.4
    unreachable_only = planner.removed_fraction(model.cfg, {}, {})
    assert unreachable_only == pytest.approx(80 * 32 / count_parameters(model))


CORPUS = """It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want
of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood,
this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful property
of some one or other of their daughters.
"""


@pytest.mark.slow
def test_a_study_of_an_imported_word_level_model_starts_from_it_and_says_so(tmp_path):
    """Through Snakemake: a user's corpus, an int8 Itera-Lite checkpoint with .moe.moe. keys and a word-level
    tokenizer; the dry run plans the whole study, the baseline is the imported model (its source in the analysis),
    the unreachable rows are a group, and the baseline's perplexity through the study's tokens is that model's."""
    from conftest import copy_project, snakemake

    workdir = copy_project(tmp_path / "study")
    for i in range(12):
        (workdir / f"doc{i}.txt").write_text(CORPUS * 3)
    words = sorted(set(CORPUS.lower().split()))
    vocabulary = {t: i for i, t in enumerate(["<PAD>", "<UNK>", "<BOS>", "<EOS>", *words])}
    (workdir / "words.json").write_text(json.dumps({"vocab_size": 200, "token_to_id": vocabulary,
                                                     "id_to_token": {}}))
    torch.manual_seed(0)
    model = IteraLiteModel(IteraLiteConfig(vocab_size=200, d_model=32, n_layers=2, max_seq=64, d_inner=64,
                                               d_state=4, n_experts=4, expert_hidden=16, top_k=2)).eval()
    model.lm_head = torch.nn.Linear(32, 200, bias=False)
    model.lm_head.weight = model.embedding.weight
    state = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8).state_dict()
    torch.save({k.replace(".moe.layer.", ".moe.moe."): v for k, v in state.items()}, workdir / "itera.pt")
    (workdir / "import.yaml").write_text(
        "corpus:\n  source: files\n  paths: [" + ", ".join(f"doc{i}.txt" for i in range(12)) + "]\n"
        "  split: {mode: documents, validation: 0.2, test: 0.2}\n"
        "model:\n  checkpoint: itera.pt\n  top_k: 2\ntokenizer:\n  path: words.json\n")
    args = ["--cores", "2", "--configfile", "config/ci.yaml", "import.yaml"]
    dry = snakemake(workdir, "all", "-n", *args)
    assert "rule export:" in dry.stdout and "rule report:" in dry.stdout
    snakemake(workdir, "results/analysis/params.json", "results/metrics/models/baseline/dense.json",
              "results/models/pruned/l1-t40-s1/model.pt", *args)
    analysis = json.loads((workdir / "results/analysis/params.json").read_text())
    assert analysis["source"]["file"] == "itera.pt" and "int8 dynamically quantized Linears (dequantized)" in \
        analysis["source"]["layout"] and analysis["config"]["architecture"] == "itera_lite"
    assert {"kind": "vocab", "channels": 200} == {k: v for k, v in next(
        g for g in analysis["groups"] if g["kind"] == "vocab").items() if k in ("kind", "channels")}
    stats = json.loads((workdir / "results/models/pruned/l1-t40-s1/prune_stats.json").read_text())
    assert stats["config_after"]["vocab_size"] == len(vocabulary) and stats["removed_fraction"] >= 0.4
    metrics = json.loads((workdir / "results/metrics/models/baseline/dense.json").read_text())
    assert 1 < metrics["test_ppl"] < 2 * 200


def test_ids_past_the_tokenizer_decode_as_unk_as_the_itera_lite_tokenizers_do(tmp_path):
    from iteralite.serve import decode

    word = tmp_path / "word.json"
    word.write_text(json.dumps({"vocab_size": 2000, "token_to_id": WORDS, "id_to_token": {}}))
    tokenizer = read_tokenizer(word)[0]
    assert tokenizer.decode([4, 1500, 5]) == "it is"  # what `tokenizers` alone does: the row is dropped
    assert decode(tokenizer, [4, 1500, 5]) == "it <UNK> is"
