"""A user's tokenizer file as a Hugging Face `tokenizers` Tokenizer, the one format the study, the export and serving
read. Torch-free: the workflow's parse reads a tokenizer's size with it.

Formats (recognised by their keys):
- Itera-Lite's SimpleTokenizer (`token2id`, `id2token`, `vocab_size`, `level`): `char` keeps every character as a
  token (case and whitespace kept), `word` lower-cases and splits on whitespace (Python's `str.lower().split()`);
- Itera-Lite's dataset loader (`vocab_size`, `token_to_id`, `id_to_token`): word level;
- a Hugging Face `tokenizer.json` (`model`, `version`), taken as it is.
Unknown tokens map to `<UNK>`. The Itera-Lite ones become a WordLevel model: `char` splits each character off
(any character, newlines included) and decodes by joining; `word` lower-cases (after mapping the separators
U+001C-U+001F, which Python's split treats as whitespace, to spaces) and splits on Unicode whitespace. That equals
Python's encoding but for one case, tested: Python lower-cases a word-final capital sigma to the final form (ς),
`tokenizers` to σ.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

MAX_BYTES = 64 * 2**20  # a tokenizer file larger than this is refused before it is parsed
MAX_ID = 2**20  # ids at or past this are refused before any tokenizer or table is built (the largest is 256k)
UNKNOWN = "<UNK>"


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file and `tokenizer.path`."""


def read_tokenizer(path) -> tuple[Tokenizer, str]:
    """(the tokenizer, the format it was found in)."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer.path: file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise TokenizerError(f"tokenizer.path {path}: {path.stat().st_size} bytes, more than a tokenizer holds "
                             f"({MAX_BYTES} at most)")
    text = path.read_text(encoding="utf-8", errors="strict")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TokenizerError(f"tokenizer.path {path} is not JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict) and {"model", "version"} <= set(data):
        vocab = data["model"].get("vocab") if isinstance(data["model"], dict) else None
        if isinstance(vocab, (dict, list)) and len(vocab) > MAX_ID:
            raise TokenizerError(f"tokenizer.path {path}: {len(vocab)} tokens, more than {MAX_ID}")
        try:
            return Tokenizer.from_str(text), "Hugging Face tokenizer.json"
        except Exception as err:  # tokenizers raises its own Exception type
            raise TokenizerError(f"tokenizer.path {path}: not a readable tokenizer.json ({err})") from None
    if isinstance(data, dict) and {"token2id", "level"} <= set(data):
        if data["level"] not in ("char", "word"):
            raise TokenizerError(f"tokenizer.path {path}: level {data['level']!r} is neither 'char' nor 'word'")
        return itera_lite_tokenizer(_vocabulary(data["token2id"], path), data["level"]), \
            f"Itera-Lite SimpleTokenizer, {data['level']} level"
    if isinstance(data, dict) and "token_to_id" in data:
        return itera_lite_tokenizer(_vocabulary(data["token_to_id"], path), "word"), \
            "Itera-Lite dataset loader vocabulary, word level"
    keys = sorted(data)[:6] if isinstance(data, dict) else type(data).__name__
    raise TokenizerError(f"tokenizer.path {path}: unknown tokenizer format (keys {keys}); expected Itera-Lite's "
                         "token2id/level or token_to_id, or a Hugging Face tokenizer.json")


def _vocabulary(mapping, path) -> dict[str, int]:
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                and 0 <= v < MAX_ID for k, v in mapping.items()):
        raise TokenizerError(f"tokenizer.path {path}: its vocabulary must map token strings to ids from 0 to "
                             f"{MAX_ID - 1}")
    if UNKNOWN not in mapping:
        raise TokenizerError(f"tokenizer.path {path}: its vocabulary has no {UNKNOWN} token for unknown words")
    if len(set(mapping.values())) != len(mapping):
        raise TokenizerError(f"tokenizer.path {path}: two tokens share an id")
    return mapping


def itera_lite_tokenizer(vocabulary: dict[str, int], level: str) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNKNOWN))
    if level == "char":
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Replace(Regex("[\x1c-\x1f]"), " "),
                                                     normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def id_count(tokenizer: Tokenizer) -> int:
    """Rows of a table the tokenizer can reach: its largest id + 1."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
