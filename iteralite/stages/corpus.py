"""Rules prepare_corpus, train_tokenizer and tokenize."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import data
from ..artifacts import atomic_path, save_torch, write_json, write_text
from ..provenance import file_sha256

log = logging.getLogger(__name__)


def prepare_corpus(corpus: dict, seed: int, out: dict) -> None:
    """`corpus` is the config's corpus section (schema-filled)."""
    docs = data.load_documents(corpus)
    split = corpus["split"]
    splits = data.split_documents(docs, split["validation"], split["test"], seed, split["mode"])
    for name, text in splits.items():
        write_text(out[name], text)
    stats = {"source": corpus["source"], "documents": len(docs), "splits": data.corpus_stats(splits)}
    if corpus["source"] == "embedded":
        stats["origin"] = "Jane Austen's six novels (public domain), from Debian's r-cran-janeaustenr package"
    write_json(out["stats"], stats)
    log.info("corpus: %d documents, %s", len(docs), {k: v["words"] for k, v in stats["splits"].items()})


def train_tokenizer(train_path: str, vocab_size: int, min_frequency: int, out_path: str) -> None:
    text = Path(train_path).read_text(encoding="utf-8")
    tokenizer = data.train_tokenizer(text, vocab_size, min_frequency)
    if tokenizer.get_vocab_size() != vocab_size:
        raise data.DataError(
            f"tokenizer.vocab_size={vocab_size} but the corpus only supports {tokenizer.get_vocab_size()} "
            "tokens; lower tokenizer.vocab_size or use a larger corpus"
        )
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp))
    log.info("tokenizer: %d tokens", tokenizer.get_vocab_size())


def tokenize(split_paths: list[str], tokenizer_path: str, window: int, out_tokens: str, out_stats: str) -> None:
    """Each split's tokens; a split shorter than one window of `window` positions and its target (which training
    and evaluation need) fails here, the job after the tokenizer, naming the keys that fix it."""
    from ..tokens import encode  # here, not above: the corpus and tokenizer jobs import this module without torch

    tokenizer = data.load_tokenizer(tokenizer_path)
    tokens = {}
    for path in split_paths:
        tokens[Path(path).stem] = encode(tokenizer, Path(path).read_text(encoding="utf-8"))
        if tokens[Path(path).stem].numel() < window + 1:
            raise data.DataError(f"corpus split {Path(path).stem}: {tokens[Path(path).stem].numel()} tokens, fewer "
                                 f"than one window of model.max_seq={window} positions and its target; a larger "
                                 "corpus, larger corpus.split fractions or a smaller model.max_seq")
    save_torch(out_tokens, {"tokens": tokens, "tokenizer_sha256": file_sha256(tokenizer_path)})
    write_json(out_stats, {name: int(t.numel()) for name, t in tokens.items()})
    log.info("tokens: %s", {name: int(t.numel()) for name, t in tokens.items()})
