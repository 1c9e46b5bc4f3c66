"""Atomic artifact writes and safe torch file loading.

Every file is written to a temporary name beside its target and renamed into place, so a job killed mid-write never
leaves an output that a rerun takes as complete. Torch files hold plain tensors and containers only and load with
torch.load(weights_only=True): a file cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint or other torch file that cannot be trusted or used; the message names the file."""


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get ordinary file permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path, content: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# torch is imported by the two functions that use it: a job that writes only JSON, CSV or HTML (summary, report)
# never pays its import (about 1.1 s).
def save_torch(path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path, what: str = "file", safe_globals=()):
    """torch.load with weights_only=True; a truncated, foreign or code-carrying file gets an error naming it.
    `safe_globals`: classes the unpickler may build besides tensors and containers (torch's `(class, "module.Name")`
    pairs build a stand-in under a foreign name); it sets their fields and runs none of the file's code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} {path} is not a torch file: torch files are zip archives and this file is not "
                              "one (another format, or cut short)")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged zip or pickle raises almost anything (KeyError, EOFError, RuntimeError...)
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if foreign:
            raise CheckpointError(f"{what} {path} holds a pickled {foreign.group(1)}, which a weights-only load does "
                                  "not build (building it would run code the file names)") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{what} {path} is not a loadable weights-only torch file ({first})") from None

