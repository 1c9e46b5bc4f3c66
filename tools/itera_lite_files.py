"""Files in the layouts the Itera-Lite code writes, for trying the import (docs/import.md) without that code, and the
import's fidelity on each of them.

    python tools/itera_lite_files.py tokenizer TRAIN_TXT OUT.json [--words N] [--vocab-size V]
        a word-level vocabulary as Itera-Lite's dataset loader saves it ({vocab_size, token_to_id, id_to_token}):
        <PAD> <UNK> <BOS> <EOS>, then the N most frequent lower-cased words of TRAIN_TXT
    python tools/itera_lite_files.py checkpoint MODEL.pt OUT.pt [--rows R] [--layout L] [--moe-moe]
        an itera_lite checkpoint of this package (one the workflow trained) as the Itera-Lite code saves it in
        layout L (iteralite/architectures/itera_lite/layouts.py: trainer, int8, nf4, ...): the table padded to R
        rows (the rows no token id reaches, drawn as that code initialises them, N(0, 0.02)); --moe-moe writes
        the MoE keys as .moe.moe.
    python tools/itera_lite_files.py fidelity MODEL.pt TOKENS.pt [--windows N]
        every layout of MODEL.pt imported and run on N test windows of TOKENS.pt (results/tokens/tokens.pt) beside
        what the Itera-Lite code computes on that file: the largest logit difference as a fraction of the logits'
        spread, and how often the two pick the same next token (a markdown table)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch

from iteralite.architectures import ITERA_LITE_FILES, facet
from iteralite.checkpoint import load_checkpoint
from iteralite.tokens import eval_windows, load_tokens

layouts = facet(ITERA_LITE_FILES, "layouts")
convert = facet(ITERA_LITE_FILES, "convert")


def word_vocabulary(train_txt: str, words: int, vocab_size: int) -> dict:
    counts = Counter(open(train_txt, encoding="utf-8").read().lower().split())
    tokens = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"] + [w for w, _ in counts.most_common(words)]
    return {"vocab_size": vocab_size, "token_to_id": {t: i for i, t in enumerate(tokens)},
            "id_to_token": {str(i): t for i, t in enumerate(tokens)}}


def itera_lite_model(model_path: str, rows: int | None = None):
    model, _ = load_checkpoint(model_path)
    if model.cfg.architecture != ITERA_LITE_FILES:
        raise SystemExit(f"{model_path} is a {model.cfg.architecture} model; the Itera-Lite layouts hold an "
                         f"{ITERA_LITE_FILES} one")
    if rows and rows > model.cfg.vocab_size:
        padding = torch.randn(rows - model.cfg.vocab_size, model.cfg.d_model,
                              generator=torch.Generator().manual_seed(0)) * 0.02
        model.embedding.weight = torch.nn.Parameter(torch.cat([model.embedding.weight.detach(), padding]))
        model.cfg.vocab_size = rows
    return model.eval()


def write_checkpoint(model_path: str, out: str, rows: int, layout: str, moe_moe: bool) -> None:
    written = layouts.WRITERS[layout](itera_lite_model(model_path, rows))
    if moe_moe:
        state = written.blob.get("model_state_dict", written.blob)
        renamed = {k.replace(".moe.layer.", ".moe.moe."): v for k, v in state.items()}
        if "model_state_dict" in written.blob:
            written.blob["model_state_dict"] = renamed
        else:
            written.blob = renamed
    layouts.save(written, out)


def fidelity(model_path: str, tokens_path: str, windows: int) -> None:
    model = itera_lite_model(model_path)
    ids = eval_windows(load_tokens(tokens_path)[0]["test"], model.cfg.max_seq, windows * (model.cfg.max_seq + 1))
    ids = ids[:, :-1]
    print(f"{model_path}, {ids.shape[0]} test windows of {ids.shape[1]} tokens\n")
    print("| layout | written by | import vs that code: max logit difference / spread | same next token |")
    print("|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, writer in layouts.WRITERS.items():
            written = writer(model)
            layouts.save(written, Path(tmp) / "file.pt")
            imported, _ = convert.read_user_checkpoint(Path(tmp) / "file.pt", model.cfg.top_k)
            if written.forward is None:
                print(f"| {name} | {written.writer} | (that code cannot run it) | |")
                continue
            theirs, ours = written.forward(ids), imported(ids)[0]
            spread = (theirs.amax(-1) - theirs.amin(-1)).mean()
            difference = ((ours - theirs).abs().max() / spread).item()
            agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
            print(f"| {name} | {written.writer} | {difference:.2e} | {agree:.2%} |")


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
    ckpt.add_argument("--layout", choices=sorted(layouts.WRITERS), default="quality")
    ckpt.add_argument("--moe-moe", action="store_true")
    fid = sub.add_parser("fidelity")
    fid.add_argument("model")
    fid.add_argument("tokens")
    fid.add_argument("--windows", type=int, default=16)
    args = parser.parse_args()
    if args.what == "tokenizer":
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(word_vocabulary(args.train_txt, args.words, args.vocab_size), f, ensure_ascii=False)
    elif args.what == "checkpoint":
        write_checkpoint(args.model, args.out, args.rows, args.layout, args.moe_moe)
    else:
        fidelity(args.model, args.tokens, args.windows)


if __name__ == "__main__":
    main()
