"""Where the sequence graph of an export spends its time: ONNX Runtime's own profiler, one thread, summed per
operator type over repeated batched forwards (benchmark.batch_size x max_seq windows of the test split).

    python tools/onnx_profile.py results/export/int4-finetuned/taylor-t40-distill-s1 results/tokens/tokens.pt
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from iteralite import serve, tokens

REPEATS = 5


def main(export_dir: str, tokens_path: str, batch: int = 8) -> None:
    manifest = serve.read_manifest(Path(export_dir))
    seq = manifest["config"]["max_seq"]
    ids = tokens.eval_windows(tokens.load_tokens(tokens_path)[0]["test"], seq, batch * seq)[:batch, :seq].numpy()
    options = serve.session_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = serve.ort.InferenceSession(str(Path(export_dir) / serve.GRAPH_FILES["sequence"]), options)
    for _ in range(REPEATS + 1):
        session.run(None, {"ids": ids.astype(np.int64)})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1000 / (REPEATS + 1)
    total = sum(per_op.values())
    print(f"{export_dir}: {batch} x {seq}, {total:.1f} ms of kernels per forward")
    for op, ms in per_op.most_common(10):
        print(f"  {op:<24}{ms:>8.1f} ms {ms / total:>5.0%}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
