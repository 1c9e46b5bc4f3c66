"""Token streams: the token file of a study, text to token ids, and the training and evaluation windows."""

from __future__ import annotations

import torch

from .artifacts import load_torch
from .data import DataError


def load_tokens(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The token ids of every split, and the SHA-256 of the tokenizer that made them."""
    blob = load_torch(path, "token file")
    return blob["tokens"], blob["tokenizer_sha256"]


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a text as int32 (the vocabulary stays below 2**16, int32 keeps torch indexing simple)."""
    chunks = text.split("\n\n")
    ids = []
    for enc in tokenizer.encode_batch([c + "\n\n" for c in chunks]):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


class TokenWindows:
    """Random training windows of seq+1 tokens from one token stream; its position is the generator's state."""

    def __init__(self, tokens: torch.Tensor, seq: int, batch: int, seed: int):
        if tokens.numel() < seq + 2:
            raise DataError(f"token stream of {tokens.numel()} tokens is shorter than one window of {seq + 1}")
        self.tokens, self.seq, self.batch = tokens.long(), seq, batch
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:  # -> (batch, seq + 1)
        starts = torch.randint(0, self.tokens.numel() - self.seq - 1, (self.batch,), generator=self.generator)
        return torch.stack([self.tokens[s : s + self.seq + 1] for s in starts.tolist()])

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.tokens.numel() // (self.seq * self.batch))


def eval_windows(tokens: torch.Tensor, seq: int, max_tokens: int) -> torch.Tensor:
    """Fixed, non-overlapping windows of seq+1 tokens covering the first max_tokens of a split: (n, seq + 1)."""
    usable = min(tokens.numel(), max_tokens + 1)
    n = (usable - 1) // seq
    if n < 1:
        raise DataError(f"split of {tokens.numel()} tokens is shorter than one evaluation window of {seq + 1}")
    starts = torch.arange(n) * seq
    return torch.stack([tokens[s : s + seq + 1].long() for s in starts.tolist()])
