"""Serve an exported model with ONNX Runtime: no torch, only onnxruntime, numpy and tokenizers.

    python -m iteralite.serve results/export/<stage>/<variant> --prompt "It is a truth" --tokens 64
    python -m iteralite.serve results/export/<stage>/<variant> --perplexity book.txt
    python -m iteralite.serve results/export/<stage>/<variant> --http 8000     (iteralite.httpserve)

An export directory (written by the export rule, iteralite.export) holds model.onnx (a whole sequence -> logits and
the recurrent state: a prompt is prefilled in one call), step.onnx (one token per row -> logits and the new state),
tokenizer.json and export.json (the interface, the SHA-256 of every file, the verification's figures). Everything
is checked before a session starts: a file that is not this project's export, truncated or edited since, a tokenizer
whose vocabulary is not the model's, a prompt that does not fit, each gets one line naming the file or argument.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

FORMAT = "iteralite-onnx-v1"  # onnxgraph.FORMAT (this module imports nothing of the package: no torch)
GRAPH_FILES = {"sequence": "model.onnx", "step": "step.onnx"}
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "export.json"
MAX_MANIFEST_BYTES = 1 << 20  # an export.json is a few kilobytes
MAX_TEXT_BYTES = 64 << 20  # the most of a --perplexity file that is read
PERPLEXITY_BATCH = 8  # windows per call of the sequence graph


class ServeError(ValueError):
    """Input that cannot be served; the message names the file or argument and what was expected."""


def sha256_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy wait between tokens
    return options


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ServeError(f"{directory}: not an IteraLite export (no {MANIFEST_FILE}; the export rule writes "
                         f"results/export/<stage>/<variant>/)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ServeError(f"{path}: {path.stat().st_size} bytes, not an export manifest (a few kilobytes)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ServeError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ServeError(f"{path}: expected format {FORMAT!r}, found {found!r}")
    missing = {"config", "interface", "graphs", "tokenizer_sha256"} - set(manifest)
    if missing:
        raise ServeError(f"{path}: lacks {sorted(missing)}")
    return manifest


def read_checked(path: Path, expected_sha256: str, what: str) -> bytes:
    """A file's bytes, if they are those the export wrote (its SHA-256 in export.json)."""
    if not path.is_file():
        raise ServeError(f"{path}: missing ({what} of the export)")
    content = path.read_bytes()
    if sha256_bytes(content) != expected_sha256:
        raise ServeError(f"{path}: not the {what} this export wrote (its SHA-256 differs from {MANIFEST_FILE}'s: "
                         f"truncated, edited or replaced)")
    return content


def sample(logits: np.ndarray, temperatures, rngs) -> np.ndarray:
    """One token per row of logits (b, v): the argmax at temperature 0, else a draw from softmax(logits /
    temperature) by its cumulative sum and one uniform of the row's own generator (so a row's draw depends on its
    logits and generator alone)."""
    picks = logits.argmax(-1)
    for row, (temperature, rng) in enumerate(zip(temperatures, rngs)):
        if temperature > 0:
            scaled = logits[row].astype(np.float64) / temperature
            cdf = np.cumsum(np.exp(scaled - scaled.max()))
            picks[row] = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)
    return picks


class OnnxModel:
    """The two graphs in ONNX Runtime sessions, with the interface the export declared."""

    def __init__(self, sessions: dict[str, ort.InferenceSession], manifest: dict):
        self.sessions, self.manifest = sessions, manifest
        self.config = manifest["config"]
        self.max_seq, self.vocab_size = self.config["max_seq"], self.config["vocab_size"]
        self.state_shapes = {name.replace("present_", ""): shape[1:] for name, shape in
                             manifest["interface"]["sequence"]["outputs"].items() if name != "logits"}
        for graph, session in sessions.items():
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get("iteralite.format") != FORMAT or meta.get("iteralite.graph") != graph:
                raise ServeError(f"{GRAPH_FILES[graph]}: not this project's {graph} graph (metadata "
                                 f"{meta.get('iteralite.format')!r}, {meta.get('iteralite.graph')!r})")
            # the graph names the tokenizer it was exported with: a tokenizer swapped with export.json's hashes
            # rewritten to match would pass the file checks and serve garbage
            if meta.get("iteralite.tokenizer_sha256") != manifest["tokenizer_sha256"]:
                raise ServeError(f"{GRAPH_FILES[graph]}: exported with the tokenizer of SHA-256 "
                                 f"{str(meta.get('iteralite.tokenizer_sha256'))[:16]}..., but {MANIFEST_FILE} names "
                                 f"{str(manifest['tokenizer_sha256'])[:16]}...: the tokenizer was replaced")

    @classmethod
    def from_bytes(cls, files: dict[str, bytes], manifest: dict, threads: int = 1) -> OnnxModel:
        sessions = {}
        for graph, name in GRAPH_FILES.items():
            try:
                sessions[graph] = ort.InferenceSession(files[name], session_options(threads),
                                                       providers=["CPUExecutionProvider"])
            except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                    ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as err:
                if "external" in str(err):  # a graph loaded from memory cannot reach an external data file
                    raise ServeError(f"{name}: refers to external data; an export is one file per graph") from None
                raise ServeError(f"{name}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None
        return cls(sessions, manifest)

    @classmethod
    def load(cls, directory, threads: int = 1) -> OnnxModel:
        directory = Path(directory)
        manifest = read_manifest(directory)
        files = {}
        for graph, name in GRAPH_FILES.items():
            entry = manifest["graphs"].get(graph) or {}
            files[name] = read_checked(directory / name, entry.get("sha256", ""), f"{graph} graph")
        return cls.from_bytes(files, manifest, threads)

    sample = staticmethod(sample)  # the sampling of generate, which the HTTP server's decoding loop takes too

    def empty_state(self, batch: int) -> dict[str, np.ndarray]:
        return {f"past_{name}": np.zeros([batch, *shape], np.float32) for name, shape in self.state_shapes.items()}

    def _check_ids(self, ids: np.ndarray, what: str) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ServeError(f"{what}: token ids must lie in [0, {self.vocab_size}), found {ids.min()}..{ids.max()}")

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """ids (b, l) -> logits (b, l, v), the state after the last token (as past_* inputs of the step graph)."""
        ids = np.asarray(ids, np.int64)
        if not 1 <= ids.shape[1] <= self.max_seq:
            raise ServeError(f"prompt: {ids.shape[1]} tokens, the model takes 1 to max_seq={self.max_seq}")
        self._check_ids(ids, "prompt")
        outputs = self.sessions["sequence"].run(None, {"ids": ids})
        names = [o.name for o in self.sessions["sequence"].get_outputs()]
        state = {name.replace("present_", "past_"): value for name, value in zip(names, outputs) if name != "logits"}
        return outputs[names.index("logits")], state

    def step(self, ids: np.ndarray, positions: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """One token per row at its position -> logits (b, v), the new state."""
        feed = {"ids": np.asarray(ids, np.int64), "position": np.asarray(positions, np.int64), **state}
        outputs = self.sessions["step"].run(None, feed)
        names = [o.name for o in self.sessions["step"].get_outputs()]
        new_state = {name.replace("present_", "past_"): v for name, v in zip(names, outputs) if name != "logits"}
        return outputs[names.index("logits")], new_state

    def generate(self, prompt: list[int], tokens: int, temperature: float, seed: int) -> list[int]:
        """The prompt prefilled in one call, then one step per new token, never past max_seq positions; greedy at
        temperature 0, else sampled from softmax(logits / temperature)."""
        end = min(len(prompt) + tokens, self.max_seq)
        logits, state = self.prefill(np.asarray([prompt]))
        rng, out, next_logits = np.random.default_rng(seed), list(prompt), logits[0, -1]
        while len(out) < end:
            out.append(int(sample(next_logits[None], [temperature], [rng])[0]))
            if len(out) < end:
                step_logits, state = self.step([out[-1]], [len(out) - 1], state)
                next_logits = step_logits[0]
        return out

    def perplexity(self, tokens: np.ndarray, max_tokens: int) -> float:
        """exp(mean next-token cross-entropy) over fixed, non-overlapping windows of max_seq + 1 tokens covering the
        first max_tokens (tokens.eval_windows, train.perplexity: the same windows, the same mean)."""
        windows = eval_windows(np.asarray(tokens, np.int64), self.max_seq, max_tokens)
        total, count = 0.0, 0
        for start in range(0, len(windows), PERPLEXITY_BATCH):
            chunk = windows[start : start + PERPLEXITY_BATCH]
            logits, _ = self.prefill(chunk[:, :-1])
            total += cross_entropy_sum(logits, chunk[:, 1:])
            count += chunk[:, 1:].size
        return float(np.exp(total / count))


def eval_windows(tokens: np.ndarray, seq: int, max_tokens: int) -> np.ndarray:
    """tokens.eval_windows in numpy: (n, seq + 1) windows starting every seq tokens of the first max_tokens + 1."""
    n = (min(tokens.size, max_tokens + 1) - 1) // seq
    if n < 1:
        raise ServeError(f"text of {tokens.size} tokens is shorter than one window of {seq + 1} tokens")
    return np.stack([tokens[s * seq : s * seq + seq + 1] for s in range(n)])


def cross_entropy_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over tokens of -log softmax(logits)[target], in float64."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float((log_norm - picked).sum())


def load_tokenizer(directory: Path, manifest: dict) -> Tokenizer:
    path = directory / TOKENIZER_FILE
    content = read_checked(path, manifest["tokenizer_sha256"], "tokenizer")
    try:
        tokenizer = Tokenizer.from_str(content.decode("utf-8"))
    except Exception as err:  # tokenizers raises its own Exception type for an unreadable file
        raise ServeError(f"{path}: not a tokenizers file ({err})") from None
    rows = manifest["config"]["vocab_size"]
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if largest >= rows:  # a tokenizer may reach fewer rows than the table has (an imported word-level one), not more
        raise ServeError(f"{path}: token ids up to {largest}, beyond the model's {rows} rows")
    return tokenizer


UNKNOWN = "<UNK>"


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of `ids`; an id the tokenizer lacks (a row of an imported table past its words, which a model may
    sample until pruning removes it) reads as the tokenizer's <UNK>, as the Itera-Lite tokenizers decode it."""
    unknown = tokenizer.token_to_id(UNKNOWN)
    if unknown is not None:
        ids = [i if tokenizer.id_to_token(i) is not None else unknown for i in ids]
    return tokenizer.decode(ids)


def encode_prompt(tokenizer: Tokenizer, prompt: str, max_seq: int) -> list[int]:
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ServeError("--prompt: empty; give at least one token of text")
    if len(ids) > max_seq:
        raise ServeError(f"--prompt: {len(ids)} tokens, more than the model's max_seq={max_seq}")
    return ids


def read_text(path: Path) -> str:
    if not path.is_file():
        raise ServeError(f"--perplexity: file not found: {path}")
    with open(path, "rb") as f:
        content = f.read(MAX_TEXT_BYTES)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ServeError(f"--perplexity: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iteralite.serve", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="results/export/<stage>/<variant>")
    parser.add_argument("--prompt", help="text to continue")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens to generate (at most up to max_seq)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perplexity", type=Path, metavar="FILE", help="score a UTF-8 text file instead")
    parser.add_argument("--max-tokens", type=int, default=100_000, help="tokens of FILE to score")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve over HTTP instead (docs/deploy.md)")
    parser.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on")
    parser.add_argument("--max-active", type=int, default=32, help="with --http: sequences decoded at once")
    parser.add_argument("--max-queue", type=int, default=64, help="with --http: requests waiting for a slot")
    args = parser.parse_args(argv)
    try:
        if sum(x is not None for x in (args.prompt, args.perplexity, args.http)) != 1:
            raise ServeError("give one of --prompt TEXT, --perplexity FILE or --http PORT")
        if args.tokens < 1:
            raise ServeError(f"--tokens: must be at least 1, got {args.tokens}")
        if args.temperature < 0:
            raise ServeError(f"--temperature: must be 0 (greedy) or more, got {args.temperature}")
        if args.threads < 1:
            raise ServeError(f"--threads: must be at least 1, got {args.threads}")
        if args.http is not None and (args.max_active < 1 or args.max_queue < 0):
            raise ServeError("--max-active must be at least 1 and --max-queue at least 0")
        model = OnnxModel.load(args.export_dir, args.threads)
        tokenizer = load_tokenizer(args.export_dir, model.manifest)
        if args.http is not None:
            from .httpserve import Limits, run  # the HTTP stack only where it serves

            run(model, tokenizer, partial(decode, tokenizer), model.manifest["model"], args.host, args.http,
                Limits(args.max_active, args.max_queue))
            return 0
        if args.perplexity is not None:
            ids = np.asarray(tokenizer.encode(read_text(args.perplexity)).ids, np.int64)
            print(f"perplexity {model.perplexity(ids, args.max_tokens):.4f} over "
                  f"{min(ids.size - 1, args.max_tokens) // model.max_seq * model.max_seq} tokens")
            return 0
        prompt = encode_prompt(tokenizer, args.prompt, model.max_seq)
        if len(prompt) + args.tokens > model.max_seq:
            print(f"note: generation stops at max_seq={model.max_seq} tokens", file=sys.stderr)
        print(decode(tokenizer, model.generate(prompt, args.tokens, args.temperature, args.seed)))
        return 0
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
