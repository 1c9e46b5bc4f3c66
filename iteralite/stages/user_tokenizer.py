"""Rule train_tokenizer with tokenizer.path: the user's tokenizer instead of a trained BPE."""

from __future__ import annotations

import logging

from ..architectures import ITERA_LITE_FILES, facet
from ..artifacts import write_text
from ..provenance import file_sha256

log = logging.getLogger(__name__)


def import_tokenizer(user_path: str, out_path: str) -> None:
    """The user's tokenizer (tokenizer.path) as a Hugging Face tokenizer.json, the format every later stage reads."""
    tokenizer, found = facet(ITERA_LITE_FILES, "tokenizer").read_tokenizer(user_path)
    write_text(out_path, tokenizer.to_str())
    log.info("tokenizer: %s from %s (%s), %d tokens", found, user_path, file_sha256(user_path),
             tokenizer.get_vocab_size())
