"""One function per workflow rule: paths and config in, artifacts out. scripts/ only call these."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import torch

from . import analysis, data, pruning
from .artifacts import (
    CheckpointError,
    atomic_path,
    load_checkpoint,
    load_torch,
    read_json,
    save_checkpoint,
    save_torch,
    write_csv,
    write_json,
    write_text,
)
from .model import IteraLite, count_parameters
from .study import model_config
from .train import Interrupted, TrainConfig, perplexity, pick_device, train

log = logging.getLogger(__name__)


def prepare_corpus(corpus_cfg: dict, seed: int, out: dict) -> None:
    docs = data.load_documents(corpus_cfg)
    split = corpus_cfg.get("split", {})
    splits = data.split_documents(
        docs, split.get("validation", 0.05), split.get("test", 0.05), seed, split.get("mode", "tail")
    )
    for name, text in splits.items():
        write_text(out[name], text)
    stats = {"source": corpus_cfg["source"], "documents": len(docs), "splits": data.corpus_stats(splits)}
    if corpus_cfg["source"] == "embedded":
        stats["origin"] = "Jane Austen's six novels (public domain), from Debian's r-cran-janeaustenr package"
    write_json(out["stats"], stats)
    log.info("corpus: %d documents, %s", len(docs), {k: v["words"] for k, v in stats["splits"].items()})


def train_tokenizer(train_path: str, tok_cfg: dict, out_path: str) -> None:
    text = Path(train_path).read_text(encoding="utf-8")
    tokenizer = data.train_tokenizer(text, tok_cfg["vocab_size"], tok_cfg.get("min_frequency", 2))
    if tokenizer.get_vocab_size() != tok_cfg["vocab_size"]:
        raise data.DataError(
            f"tokenizer.vocab_size={tok_cfg['vocab_size']} but the corpus only supports {tokenizer.get_vocab_size()} "
            "tokens; lower tokenizer.vocab_size or use a larger corpus"
        )
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp))
    log.info("tokenizer: %d tokens", tokenizer.get_vocab_size())


def tokenize(split_paths: list[str], tokenizer_path: str, out_tokens: str, out_stats: str) -> None:
    tokenizer = data.load_tokenizer(tokenizer_path)
    tokens = {}
    for path in split_paths:
        tokens[Path(path).stem] = data.encode(tokenizer, Path(path).read_text(encoding="utf-8"))
    save_torch(out_tokens, {"tokens": tokens, "tokenizer_sha256": data.file_sha256(tokenizer_path)})
    write_json(out_stats, {name: int(t.numel()) for name, t in tokens.items()})
    log.info("tokens: %s", {name: int(t.numel()) for name, t in tokens.items()})


def load_tokens(path: str) -> tuple[dict[str, torch.Tensor], str]:
    blob = load_torch(path, "token file")
    return blob["tokens"], blob["tokenizer_sha256"]


def train_model(config: dict, train_cfg: dict, tokens_path: str, out_checkpoint: str, out_curve: str,
                init_checkpoint: str | None = None, teacher_checkpoint: str | None = None) -> None:
    """Baseline (init_checkpoint None: a fresh model), fine-tune or control; resumable through a state file
    beside the checkpoint that is no declared output, so a failed job keeps it for its retry."""
    tokens, tokenizer_sha = load_tokens(tokens_path)
    cfg = TrainConfig.from_dict({**train_cfg, "seed": config["seed"]})
    device = pick_device(config.get("device", "auto"))
    if init_checkpoint:
        model, _ = load_checkpoint(init_checkpoint)
    else:
        torch.manual_seed(config["seed"])
        model = IteraLite(model_config(config))
    teacher = load_checkpoint(teacher_checkpoint)[0] if teacher_checkpoint and cfg.distill_weight > 0 else None
    resume = Path(out_checkpoint).with_name("train_state.pt")
    log.info("training on %s: %d parameters, resume state %s", device, sum(p.numel() for p in model.parameters()),
             resume)
    try:
        model, curve = train(model, tokens["train"], tokens["validation"], cfg, resume, teacher, device)
    except Interrupted as err:
        log.warning("%s", err)
        raise SystemExit(75) from None  # non-zero: Snakemake retries, the retry resumes
    model.cpu()
    write_csv(out_curve, pd.DataFrame(curve))
    save_checkpoint(out_checkpoint, model, tokenizer_sha, {"steps": len(curve), "device": str(device)})
    if resume.exists():
        resume.unlink()


def use_checkpoint(config: dict, user_checkpoint: str, tokens_path: str, out_checkpoint: str, out_curve: str):
    """A user-supplied baseline: checked against the study's model config and tokenizer, then copied."""
    model, meta = load_checkpoint(user_checkpoint)
    expected = model_config(config).to_dict()
    if meta["config"] != expected:
        diff = {k: (meta["config"].get(k), v) for k, v in expected.items() if meta["config"].get(k) != v}
        raise CheckpointError(f"model.checkpoint {user_checkpoint} does not match the config's model: {diff}")
    _, tokenizer_sha = load_tokens(tokens_path)
    if meta.get("tokenizer_sha256") != tokenizer_sha:
        raise CheckpointError(f"model.checkpoint {user_checkpoint} was trained with another tokenizer")
    write_csv(out_curve, pd.DataFrame(columns=["step", "train_loss", "val_ppl"]))
    save_checkpoint(out_checkpoint, model, tokenizer_sha, meta.get("meta"))


def analyze(checkpoint: str, out_json: str, out_csv: str, out_groups: str) -> None:
    model, _ = load_checkpoint(checkpoint)
    result = analysis.analyze(model)
    write_json(out_json, result)
    write_csv(out_csv, pd.DataFrame(result["by_component_and_layer"]))
    write_csv(out_groups, pd.DataFrame(result["groups"]))
    log.info("analysis: %d parameters", result["total_params"])


def load_any(path: str):
    """An fp checkpoint or an INT4 file, as a model ready for inference on the CPU."""
    from . import quant

    blob = load_torch(path, "model file")
    if isinstance(blob, dict) and blob.get("format") == quant.INT4_FORMAT:
        return quant.load_quantized(path)
    return load_checkpoint(path)[0]


def model_row(model_id: str, path: str, model) -> dict:
    """The summary.csv columns every stage knows: id, stage, criterion, target, params, file bytes."""
    stage, _, variant = model_id.partition("/")
    criterion, _, target = variant.partition("-") if variant != "dense" else ("dense", "", "")
    return {
        "model": model_id,
        "stage": "int4" if stage.startswith("int4") else stage,
        "criterion": criterion,
        "target": target,
        "params": getattr(model, "n_params", None) or count_parameters(model),
        "file_bytes": os.path.getsize(path),
    }


def evaluate(model_id: str, model_path: str, tokens_path: str, test_tokens: int, out_json: str) -> None:
    model = load_any(model_path)
    tokens, _ = load_tokens(tokens_path)
    row = model_row(model_id, model_path, model)
    row["test_ppl"] = perplexity(model, tokens["test"], test_tokens)
    write_json(out_json, row)
    log.info("%s: test perplexity %.2f, %d parameters, %d bytes", model_id, row["test_ppl"], row["params"],
             row["file_bytes"])


SUMMARY_COLUMNS = ["model", "stage", "criterion", "target", "params", "file_bytes", "test_ppl", "tokens_per_s",
                   "step_latency_ms"]


def summarize(metric_paths: list[str], speed_csv: str | None, out_csv: str) -> pd.DataFrame:
    rows = pd.DataFrame([read_json(p) for p in metric_paths])
    if speed_csv:
        speed = pd.read_csv(speed_csv)[["model", "tokens_per_s", "step_latency_ms", "peak_mem_mb", "weight_mem_mb"]]
        rows = rows.merge(speed, on="model", how="left")
    for column in SUMMARY_COLUMNS:
        if column not in rows:
            rows[column] = float("nan")
    rows = rows[SUMMARY_COLUMNS + [c for c in rows.columns if c not in SUMMARY_COLUMNS]]
    write_csv(out_csv, rows)
    return rows


def score_importance(config: dict, checkpoint: str, tokens_path: str, criterion: str, out_scores: str,
                     out_csv: str) -> None:
    model, _ = load_checkpoint(checkpoint)
    p = config["pruning"]
    stats = pruning.CalibrationStats()
    needs = pruning.CRITERIA[criterion].needs_calibration or p.get("expert_criterion", "routing") == "routing"
    if needs and criterion != "random":
        tokens, _ = load_tokens(tokens_path)
        windows = data.TokenWindows(tokens["train"], model.cfg.max_seq, config["train"]["batch_size"], config["seed"])
        batches = [windows.next() for _ in range(p.get("calibration_batches", 4))]
        stats = pruning.calibrate(model, batches, config["train"].get("aux_loss_weight", 0.01))
    scores = pruning.score_groups(model, criterion, stats, config["seed"], p.get("expert_criterion", "routing"))
    save_torch(out_scores, {"criterion": criterion, "scores": scores})
    groups = {g.name: g for g in pruning.build_groups(model.cfg)}
    write_csv(out_csv, pd.DataFrame([
        {"group": name, "kind": groups[name].kind, "layer": groups[name].layer, "expert": groups[name].expert,
         "channel": c, "score": float(v)}
        for name, s in scores.items() for c, v in enumerate(s)
    ]))
    log.info("%s scores for %d groups", criterion, len(scores))


def prune(config: dict, variant: str, checkpoint: str, scores_path: str, out_checkpoint: str, out_stats: str):
    from .study import parse_variant, plan_for

    criterion, target = parse_variant(config, variant)
    dense, meta = load_checkpoint(checkpoint)
    plan = plan_for(config, target)
    counts = pruning.plan_counts(dense.cfg, plan["ratios"], plan["round_to"])
    scores = load_torch(scores_path, "importance scores")["scores"]
    kept = pruning.choose_kept(scores, counts)
    pruned = pruning.prune(dense, kept)
    save_checkpoint(out_checkpoint, pruned, meta["tokenizer_sha256"], {"pruned_from": checkpoint, "variant": variant})
    before = analysis.component_totals(analysis.parameter_table(dense)).set_index("component")["params"]
    after = analysis.component_totals(analysis.parameter_table(pruned)).set_index("component")["params"]
    groups = pruning.build_groups(dense.cfg)
    stats = {
        "variant": variant, "criterion": criterion, "target": target, "plan": plan,
        "params_before": int(before.sum()), "params_after": int(after.sum()),
        "removed_fraction": 1 - float(after.sum()) / float(before.sum()),
        "file_bytes_before": os.path.getsize(checkpoint), "file_bytes_after": os.path.getsize(out_checkpoint),
        "by_component": [
            {"component": c, "before": int(before[c]), "after": int(after.get(c, 0))} for c in before.index
        ],
        "groups": [
            {"group": g.name, "kind": g.kind, "layer": g.layer, "expert": g.expert, "total": g.size,
             "kept": len(kept[g.name])}
            for g in groups
        ],
        "config_after": pruned.cfg.to_dict(),
    }
    write_json(out_stats, stats)
    log.info("%s: %d -> %d parameters (%.1f%% removed)", variant, stats["params_before"], stats["params_after"],
             100 * stats["removed_fraction"])


def quantize(checkpoint: str, qcfg: dict, out_model: str, out_stats: str) -> None:
    from . import quant

    model, meta = load_checkpoint(checkpoint)
    blob, stats = quant.quantize_model(model, qcfg.get("group_size", 32), qcfg.get("keep_high_precision", []),
                                       meta["tokenizer_sha256"])
    quant.save_quantized(out_model, blob)
    stats.update({"source": checkpoint, "source_bytes": os.path.getsize(checkpoint),
                  "file_bytes": os.path.getsize(out_model)})
    write_json(out_stats, stats)
    log.info("INT4: %.2f bits/param, %d -> %d bytes", stats["bits_per_param"], stats["source_bytes"],
             stats["file_bytes"])


def benchmark(model_ids: list[str], paths: list[str], tokens_path: str, tokenizer_path: str, bcfg: dict,
              out: dict) -> None:
    """Every model side by side in one process, fixed threads, interleaved repeats, medians."""
    from . import bench

    torch.set_num_threads(bcfg.get("threads", 1))
    models = {m: load_any(p) for m, p in zip(model_ids, paths)}
    tokens, _ = load_tokens(tokens_path)
    speed, latency = bench.measure(models, tokens["test"], bcfg)
    write_csv(out["speed"], speed)
    write_csv(out["latency"], latency)
    tokenizer = data.load_tokenizer(tokenizer_path)
    write_json(out["samples"], bench.samples(models, tokenizer, bcfg["prompts"], bcfg.get("sample_tokens", 40)))
