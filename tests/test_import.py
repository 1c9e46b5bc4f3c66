"""Importing a user's Itera-Lite checkpoint and tokenizer (iteralite/architectures/itera_lite/convert.py,
tokenizer.py)."""

import copy
import dataclasses
import json
import pickle

import pytest
import torch
import yaml

from iteralite import study
from iteralite.architectures.itera_lite.config import Config as IteraLiteConfig
from iteralite.architectures.itera_lite.convert import read_user_checkpoint
from iteralite.architectures.itera_lite.model import Model as IteraLiteModel
from iteralite.architectures.itera_lite.tokenizer import TokenizerError, read_tokenizer
from iteralite.artifacts import CheckpointError

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
    """The state dict the Itera-Lite code saves: with the tied lm_head.weight and the routers' expert_counts."""
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["embedding.weight"]
    for i in model.cfg.moe_layers:
        state[f"layers.{i}.moe.layer.router.expert_counts"] = torch.rand(model.cfg.n_experts)
    return state


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


def test_float16_tensors_and_a_router_with_no_experts(original, tmp_path):
    """A router of 0 experts (a file the Itera-Lite code wrote with num_experts 0) is a layer without its MoE block;
    float16 tensors are read as float32: the model equals the original with that block gone, in float16 values."""
    state = {k: v.half() for k, v in as_itera_lite(original).items() if ".moe.layer.experts." not in k}
    state["layers.1.moe.layer.router.gate.weight"] = torch.zeros(0, 32, dtype=torch.float16)
    state["layers.1.moe.layer.router.expert_counts"] = torch.zeros(0)
    model, found = imported({"model_state_dict": state, "config": {**ITERA_CONFIG, "num_experts": 0,
                                                                   "top_k_experts": 2}}, tmp_path)
    assert found["warnings"] == ["layer 1: its router has 0 experts; the layer has no MoE block"]
    assert "moe" not in model.layers[1] and "float16 tensors (to float32)" in found["layout"]
    expected = copy.deepcopy(original)
    del expected.layers[1]["moe"]
    with torch.no_grad():
        for p in expected.parameters():
            p.copy_(p.half().float())
    torch.testing.assert_close(model(IDS)[0], expected(IDS)[0], rtol=0, atol=0)


def test_int8_dynamically_quantized_linears_are_dequantized(original, tmp_path):
    """The state dict of torch's dynamic int8 quantization of the model (lm_head a quantized copy of the table).
    The import computes with the dequantized weights in float32; the int8 model also quantizes its activations,
    so the two agree within 2% of the logits' spread."""
    with_head = copy.deepcopy(original)
    with_head.lm_head = torch.nn.Linear(32, 90, bias=False)
    with_head.lm_head.weight = with_head.embedding.weight
    quantized = torch.ao.quantization.quantize_dynamic(with_head, {torch.nn.Linear}, torch.qint8)
    model, found = imported(quantized.state_dict(), tmp_path, top_k=2)
    assert "int8 dynamically quantized Linears (dequantized)" in found["layout"]
    dequantized = copy.deepcopy(original)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if hasattr(module, "weight") and callable(module.weight) and name != "lm_head":
                dequantized.get_submodule(name).weight.copy_(module.weight().dequantize())
    torch.testing.assert_close(model(IDS)[0], dequantized(IDS)[0], rtol=0, atol=1e-6)
    logits = original(IDS)[0]
    assert (model(IDS)[0] - logits).abs().max() < 0.02 * (logits.max() - logits.min())


@pytest.mark.parametrize("change, message", [
    (lambda s, c: s.__setitem__("layers.0.ssm.conv1d.weight", torch.zeros(48, 1, 4)),
     "its tensors contradict each other: size mismatch for layers.0.ssm.conv1d.weight"),
    (lambda s, c: c.__setitem__("hidden_size", 64), "its config says hidden_size=64, its tensors give 32"),
    (lambda s, c: c.__setitem__("moe_layers", [1, 2]), "its config says moe_layers=[1, 2], its tensors have routers"),
    (lambda s, c: c.__setitem__("top_k_experts", 4), "top_k=4 (the file's config (top_k_experts)) exceeds the 3 "
                                                     "experts of layer 1"),
    (lambda s, c: s.pop("layers.2.ssm.ssm.A_log"), "its tensors contradict each other: Missing key(s)"),
    (lambda s, c: c.__setitem__("top_k_experts", "2"), "its config's top_k_experts is '2', not a positive integer"),
    (lambda s, c: s.__setitem__("layers.0.ssm.ssm.D", torch.zeros(64, dtype=torch.int64)),
     "layers.0.ssm.ssm.D is a Tensor of torch.int64, not a floating-point tensor"),
])
def test_a_file_whose_tensors_or_config_do_not_fit_is_refused_naming_what(original, tmp_path, change, message):
    state, config = as_itera_lite(original), dict(ITERA_CONFIG)
    change(state, config)
    with pytest.raises(CheckpointError) as err:
        imported({"model_state_dict": state, "config": config}, tmp_path)
    assert str(err.value).startswith(f"model.checkpoint {tmp_path / 'itera.pt'}") and message in str(err.value)


class RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("blob, message", [
    ({"weights": torch.zeros(2)}, "is neither an IteraLite checkpoint (format iteralite-checkpoint-v1) nor an "
                                  "Itera-Lite one"),
    ({"model_state_dict": {"embedding.weight": torch.zeros(4, 2)}, "hook": RunsCode()},
     "is not a loadable weights-only torch file"),
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
    config["tokenizer"]["path"] = None
    with pytest.raises(study.ConfigError, match="is an Itera-Lite checkpoint: tokenizer.path must name the tokenizer"):
        study.validate(config)


@pytest.mark.parametrize("tokens, edit, message", [
    ({**WORDS, "far": 95}, {}, "ids up to 95, beyond the 90 rows of model.checkpoint"),
    (WORDS, {"benchmark": {"contexts": [16, 256]}}, "max_seq 128 is shorter than the study's windows need"),
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
