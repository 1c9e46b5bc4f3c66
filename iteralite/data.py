"""Corpus loading (through `datasets`), deterministic splits and the BPE tokenizer: no torch, which the corpus jobs
would otherwise import for nothing (tokens.py holds the token streams)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from . import corpusfiles
from .paths import EMBEDDED_CORPUS

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """Bad corpus or tokenizer input; the message names the file or config key."""


def load_documents(corpus_cfg: dict) -> list[str]:
    """Documents of the configured corpus: `embedded`, local `files` (text/json/jsonl/parquet) or a `hub` dataset."""
    source = corpus_cfg["source"]
    field = corpus_cfg["text_field"]
    if source == "embedded":
        with gzip.open(EMBEDDED_CORPUS, "rt", encoding="utf-8") as f:
            docs = [json.loads(line)[field] for line in f]
    elif source == "files":
        docs = _load_local_files(corpus_cfg.get("paths") or [], field)
    elif source == "hub":
        docs = _load_hub(corpus_cfg, field)
    else:
        raise DataError(f"corpus.source must be embedded, files or hub, got {source!r}")
    docs = [d for d in docs if d and d.strip()]
    if not docs or sum(len(d) for d in docs) == 0:
        raise DataError(f"corpus is empty (corpus.source={source!r}, {corpus_cfg.get('paths') or ''})")
    return docs


def _load_local_files(paths: list[str], field: str) -> list[str]:
    import datasets

    try:  # what the parse checked; a file may have changed since
        builder = corpusfiles.check_files(paths, field)
    except corpusfiles.CorpusFileError as err:
        raise DataError(str(err)) from None
    if builder == "text":
        # One document per file: paragraphs of a book must stay in order for contiguous splits.
        docs = []
        for path in paths:
            try:
                docs.append(Path(path).read_text(encoding="utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(f"corpus.paths: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        return docs
    try:
        table = datasets.load_dataset(builder, data_files=list(paths), split="train")
    except Exception as err:  # datasets raises many types; name the files
        raise DataError(f"corpus.paths: could not read {paths}: {err}") from err
    if field not in table.column_names:
        raise DataError(f"corpus.text_field {field!r} is not a column of {paths} (columns: {table.column_names})")
    return list(table[field])


def _load_hub(corpus_cfg: dict, field: str) -> list[str]:
    """A hub dataset for users with network. Offline (HF_DATASETS_OFFLINE=1) it fails at once instead of retrying."""
    import datasets

    name = corpus_cfg.get("hub_name")
    if not name:
        raise DataError("corpus.hub_name must name a dataset when corpus.source is 'hub'")
    try:
        table = datasets.load_dataset(name, split=corpus_cfg["hub_split"])
    except Exception as err:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ""
        if offline:
            hint = " (HF_DATASETS_OFFLINE=1: no network access is attempted; unset it on a machine with network)"
        raise DataError(f"corpus.hub_name {name!r} could not be loaded{hint}: {type(err).__name__}: {err}") from None
    limit = corpus_cfg.get("max_documents")
    texts = table[field] if not limit else table.select(range(min(limit, len(table))))[field]
    return list(texts)


def split_documents(docs: list[str], validation: float, test: float, seed: int, mode: str = "tail") -> dict[str, str]:
    """Deterministic train/validation/test text.

    mode 'tail': each document's last lines go to validation and test (few long documents, e.g. novels: every book
    is seen in training, none of the held-out text is). mode 'documents': whole documents are shuffled with the seed
    and dealt out (many short documents, e.g. stories).
    """
    if not 0 < validation < 0.5 or not 0 < test < 0.5:
        raise DataError(f"corpus.split fractions must lie in (0, 0.5), got validation={validation}, test={test}")
    parts = {name: [] for name in SPLITS}
    if mode == "tail":
        for doc in docs:
            lines = doc.splitlines()
            n = len(lines)
            n_val, n_test = max(1, round(n * validation)), max(1, round(n * test))
            if n - n_val - n_test < 1:
                raise DataError(f"corpus: a document of {n} lines is too short to split (corpus.split.mode=tail)")
            parts["train"].append("\n".join(lines[: n - n_val - n_test]))
            parts["validation"].append("\n".join(lines[n - n_val - n_test : n - n_test]))
            parts["test"].append("\n".join(lines[n - n_test :]))
    elif mode == "documents":
        if len(docs) < 3:
            raise DataError(f"corpus.split.mode=documents needs at least 3 documents, got {len(docs)}")
        import torch  # its seeded permutation: the one place here that needs it

        order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val, n_test = max(1, round(len(docs) * validation)), max(1, round(len(docs) * test))
        for rank, i in enumerate(order):
            name = "validation" if rank < n_val else "test" if rank < n_val + n_test else "train"
            parts[name].append(docs[i])
    else:
        raise DataError(f"corpus.split.mode must be 'tail' or 'documents', got {mode!r}")
    return {name: "\n\n".join(texts) for name, texts in parts.items()}


def corpus_stats(splits: dict[str, str]) -> dict:
    return {
        name: {"characters": len(text), "words": len(text.split()), "lines": text.count("\n") + 1}
        for name, text in splits.items()
    }


def train_tokenizer(text: str, vocab_size: int, min_frequency: int = 2):
    """Byte-level BPE (Hugging Face tokenizers); any UTF-8 text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or not 256 < vocab_size <= 65535:
        raise DataError(f"tokenizer.vocab_size must be an integer in (256, 65535], got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tokenizer


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
