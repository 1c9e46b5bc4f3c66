"""Files in the layouts the Itera-Lite code writes, for trying the import (docs/import.md) without that code.

    python tools/itera_lite_files.py tokenizer TRAIN_TXT OUT.json [--words N] [--vocab-size V]
        a word-level vocabulary as Itera-Lite's dataset loader saves it ({vocab_size, token_to_id, id_to_token}):
        <PAD> <UNK> <BOS> <EOS>, then the N most frequent lower-cased words of TRAIN_TXT
    python tools/itera_lite_files.py checkpoint MODEL.pt OUT.pt [--rows R] [--layout dict|bare|int8] [--moe-moe]
        a reference-architecture checkpoint of this package (one the workflow trained with that tokenizer) as
        the Itera-Lite code saves its model: the table padded to R rows (the rows no token id reaches, drawn as
        that code initialises them, N(0, 0.02)), the tied lm_head.weight, the routers' expert_counts; `dict`
        wraps it in {model_state_dict, config}, `bare` is the state dict alone, `int8` the state dict of
        torch's dynamic int8 quantization of its Linears; --moe-moe writes the MoE keys as .moe.moe.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from iteralite.architectures import ITERA_LITE_FILES
from iteralite.checkpoint import load_checkpoint


def word_vocabulary(train_txt: str, words: int, vocab_size: int) -> dict:
    counts = Counter(open(train_txt, encoding="utf-8").read().lower().split())
    tokens = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"] + [w for w, _ in counts.most_common(words)]
    return {"vocab_size": vocab_size, "token_to_id": {t: i for i, t in enumerate(tokens)},
            "id_to_token": {str(i): t for i, t in enumerate(tokens)}}


def itera_lite_state(model_path: str, rows: int, layout: str, moe_moe: bool):
    model, _ = load_checkpoint(model_path)
    cfg = model.cfg
    if cfg.architecture != ITERA_LITE_FILES:
        raise SystemExit(f"{model_path} is a {cfg.architecture} model; the Itera-Lite layouts hold an "
                         f"{ITERA_LITE_FILES} one")
    generator = torch.Generator().manual_seed(0)
    table = model.embedding.weight.detach()
    padding = torch.randn(rows - table.shape[0], table.shape[1], generator=generator) * 0.02
    with torch.no_grad():
        model.embedding.weight = torch.nn.Parameter(torch.cat([table, padding]))
    if layout == "int8":
        model.lm_head = torch.nn.Linear(cfg.d_model, rows, bias=False)
        model.lm_head.weight = model.embedding.weight
        state = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8).state_dict()
    else:
        state = dict(model.state_dict())
        state["lm_head.weight"] = state["embedding.weight"]
    for i in cfg.moe_layers:
        state[f"layers.{i}.moe.layer.router.expert_counts"] = torch.full((cfg.experts_in(i),), 1.0 / cfg.top_k)
    if moe_moe:
        state = {k.replace(".moe.layer.", ".moe.moe."): v for k, v in state.items()}
    if layout != "dict":
        return state
    config = {"vocab_size": rows, "hidden_size": cfg.d_model, "num_layers": cfg.n_layers,
              "ssm_state_size": cfg.d_state, "ssm_conv_kernel": cfg.d_conv, "ssm_expand_factor": cfg.d_inner //
              cfg.d_model, "num_experts": cfg.n_experts, "expert_size": cfg.expert_hidden,
              "top_k_experts": cfg.top_k, "moe_layers": cfg.moe_layers, "load_balance_loss_weight": 0.01,
              "max_seq_length": cfg.max_seq, "dropout": 0.1, "layer_norm_eps": cfg.norm_eps}
    return {"model_state_dict": state, "config": config}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tok = sub.add_parser("tokenizer")
    tok.add_argument("train_txt")
    tok.add_argument("out")
    tok.add_argument("--words", type=int, default=1000)
    tok.add_argument("--vocab-size", type=int, default=2000)
    ckpt = sub.add_parser("checkpoint")
    ckpt.add_argument("model")
    ckpt.add_argument("out")
    ckpt.add_argument("--rows", type=int, default=2000)
    ckpt.add_argument("--layout", choices=["dict", "bare", "int8"], default="dict")
    ckpt.add_argument("--moe-moe", action="store_true")
    args = parser.parse_args()
    if args.what == "tokenizer":
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(word_vocabulary(args.train_txt, args.words, args.vocab_size), f, ensure_ascii=False)
    else:
        torch.save(itera_lite_state(args.model, args.rows, args.layout, args.moe_moe), args.out)


if __name__ == "__main__":
    main()
