"""A user's corpus files (`corpus.source: files`): the type each is read as, and the checks that cost no more than a
file's first bytes, run when the workflow is parsed (iteralite.study). Free of torch and datasets, which the parse
never imports for them; prepare_corpus reads the files whole (iteralite.data)."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

# suffix -> the `datasets` builder that reads it ("text": one document per file, read here, not by datasets)
BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
HEAD_BYTES = 1 << 16  # what the parse reads of a text file: its first 64 KiB


class CorpusFileError(ValueError):
    """A corpus file that cannot be read as configured; the message names the key and the file."""


def builder_of(paths: list[str]) -> str:
    """The one builder that reads every file of `paths` (by suffix); a type not supported, or two types, raise."""
    suffixes = sorted({Path(path).suffix.lower() for path in paths})
    for suffix in suffixes:
        if suffix not in BUILDERS:
            example = next(path for path in paths if Path(path).suffix.lower() == suffix)
            raise CorpusFileError(f"corpus.paths: unsupported file type {suffix!r} ({example}); use .txt, .json, "
                                  ".jsonl or .parquet")
    builders = {BUILDERS[suffix] for suffix in suffixes}
    if len(builders) > 1:
        raise CorpusFileError(f"corpus.paths: files of types {', '.join(suffixes)} in one corpus; name files of "
                              "one type (.txt, .json/.jsonl or .parquet)")
    return builders.pop()


def check_files(paths: list[str], text_field: str) -> str:
    """What the parse can tell from each file's size and first bytes: it exists and is not empty, its type is read
    here, a text file starts as UTF-8, a JSON Lines file's first record and a Parquet file's schema hold
    `text_field`. Returns the builder that reads them (`builder_of`)."""
    if not paths:
        raise CorpusFileError("corpus.paths must list at least one file when corpus.source is 'files'")
    for path in paths:
        if not os.path.isfile(path):
            raise CorpusFileError(f"corpus.paths: file not found: {path}")
        if os.path.getsize(path) == 0:
            raise CorpusFileError(f"corpus.paths: file is empty: {path}")
    builder = builder_of(paths)
    for path in paths:
        if builder == "text" or Path(path).suffix.lower() == ".jsonl":
            head = _utf8_head(path)
            if Path(path).suffix.lower() == ".jsonl":
                _check_first_record(path, head, text_field)
        elif builder == "parquet":
            _check_parquet_schema(path, text_field)
    return builder


def _utf8_head(path: str) -> str:
    """The file's first HEAD_BYTES as text (a character cut at the end is left for the full read)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as err:
        raise CorpusFileError(f"corpus.paths: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _check_first_record(path: str, head: str, text_field: str) -> None:
    lines = head.split("\n")  # JSON Lines ends a record at "\n" only (a record may hold U+2028 and the like)
    complete = lines if os.path.getsize(path) <= HEAD_BYTES else lines[:-1]  # the last may be cut by the head
    line = next((line for line in complete if line.strip()), None)
    if line is None:
        if len(complete) < len(lines):
            return  # no whole record in the head: the full read checks the file
        raise CorpusFileError(f"corpus.paths: {path} holds no JSON record")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusFileError(f"corpus.paths: {path}: its first record is not JSON ({err.msg})") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CorpusFileError(f"corpus.text_field {text_field!r} is not a key of the first record of {path} "
                              f"(its keys: {keys})")


def _check_parquet_schema(path: str, text_field: str) -> None:
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise CorpusFileError(f"corpus.paths: {path} is not a Parquet file ({err})") from None
    if text_field not in columns:
        raise CorpusFileError(f"corpus.text_field {text_field!r} is not a column of {path} (columns: {columns})")
