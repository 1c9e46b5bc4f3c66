"""Rule export: a model as ONNX graphs for ONNX Runtime, verified against torch before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import export as onnx_export
from .. import serve
from ..artifacts import write_bytes, write_json
from ..tokens import load_tokens


def export(model_id: str, model_path: str, tokens_path: str, tokenizer_path: str, settings: onnx_export.ExportSettings,
           out: dict) -> None:
    """`out` maps sequence, step, tokenizer and manifest to their paths. The graphs are built and verified in
    memory; the files are written only once the verification has passed, export.json (the record of the
    verification) last."""
    tokens, tokenizer_sha256 = load_tokens(tokens_path)
    torch.set_num_threads(1)  # the verification's figures do not depend on the job's threads
    files, manifest = onnx_export.export(model_id, model_path, tokens["test"], tokenizer_sha256, settings)
    tokenizer = Path(tokenizer_path).read_bytes()
    if serve.sha256_bytes(tokenizer) != tokenizer_sha256:
        raise onnx_export.ExportError(f"{tokenizer_path} is not the tokenizer {tokens_path} was encoded with")
    write_bytes(out["sequence"], files[serve.GRAPH_FILES["sequence"]])
    write_bytes(out["step"], files[serve.GRAPH_FILES["step"]])
    write_bytes(out["tokenizer"], tokenizer)
    write_json(out["manifest"], manifest)

