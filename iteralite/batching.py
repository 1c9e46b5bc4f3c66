"""Continuous batching for an exported model: many sequences decoded in one step graph call per token.

A state-space model's sequence carries a fixed-size state (its conv window and scan state per layer), so sequences
join and leave a running batch at any step with nothing to re-pack: each waiting request's prompt is prefilled by the
sequence graph (one call, its own), its state joins the batch, and every step the step graph advances all active
sequences by one token; a sequence that reaches its length, the window or is cancelled leaves at once and frees its
slot. One thread runs the loop (ONNX Runtime releases the GIL while it computes); requests come and go from any
thread. Torch-free, and free of serve.py, which it is handed a model of.

Sampling is per sequence with its own generator (`numpy.random.default_rng(seed)`), so a request's tokens depend on
its prompt and seed only, not on which others share its steps; ONNX Runtime's batched step agrees with a single
row's to about 1e-5 of the logits (tests/test_http.py checks the tokens of 32 concurrent requests against each alone).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)
# upper bounds of the batch-size histogram /metrics reports
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

class StepModel(Protocol):
    """What the loop needs of a model: serve.OnnxModel's two graphs, its sizes and its sampling."""

    max_seq: int
    vocab_size: int

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...

    def step(self, ids: np.ndarray, positions: np.ndarray, state: dict) -> tuple[np.ndarray, dict]: ...

    def empty_state(self, batch: int) -> dict[str, np.ndarray]: ...

    def sample(self, logits: np.ndarray, temperatures, rngs) -> np.ndarray: ...


class Busy(RuntimeError):
    """Every slot and place in the queue taken (or the engine draining): the caller should come back later."""


@dataclass
class Request:
    """One completion: `prompt` ids, up to `max_tokens` new ones (fewer where the window ends first). `on_token(id)`
    is called from the engine's thread for every new token, `on_done(reason)` once at the end: "length" (done),
    "cancelled" (the client left, or the engine stopped) or "error"."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int
    on_token: Callable[[int], None]
    on_done: Callable[[str], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Sequence:
    request: Request
    tokens: list[int]
    end: int  # the length at which it stops: prompt + max_tokens, at most the window
    rng: np.random.Generator


@dataclass
class Stats:
    """What /metrics reports; updated by the engine's thread, read by any."""

    steps: int = 0
    tokens: int = 0
    batch_counts: list[int] = field(default_factory=lambda: [0] * len(BATCH_BUCKETS))  # steps per bucket (<= bound)

    def observe_batch(self, size: int) -> None:
        self.steps += 1
        self.batch_counts[next((i for i, bound in enumerate(BATCH_BUCKETS) if size <= bound), -1)] += 1


class Engine:
    """The decoding loop over at most `max_active` sequences, with a queue of at most `max_queue` waiting.

    The active sequences' next-token logits and recurrent states are held as one batch (row i: `active[i]`), passed
    to the step graph as they are and re-gathered only when a sequence joins or leaves. `notify(callbacks)` runs a
    step's callbacks (every token and end of that step) at once: the HTTP server hands them to its event loop in
    one call per step, not one per token."""

    def __init__(self, model: StepModel, max_active: int = 32, max_queue: int = 64,
                 notify: Callable[[list[Callable[[], None]]], None] | None = None):
        self.model, self.max_active, self.max_queue = model, max_active, max_queue
        self.notify = notify or (lambda callbacks: [callback() for callback in callbacks])
        self.waiting: queue.Queue[Request] = queue.Queue()  # bounded by submit, with the active sequences
        self.active: list[Sequence] = []
        self.logits = np.zeros((0, model.vocab_size), np.float32)
        self.state = model.empty_state(0)
        self.stats = Stats()
        self.draining = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decoding-loop", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def submit(self, request: Request) -> None:
        """Queue a request; Busy when the queue is full or the engine drains."""
        if self.draining.is_set():
            raise Busy("the server is shutting down")
        if len(self.active) + self.waiting.qsize() >= self.max_active + self.max_queue:
            raise Busy(f"{self.max_active} sequences are decoding and {self.max_queue} requests waiting")
        self.waiting.put_nowait(request)
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; sequences still active end as cancelled."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            callbacks: list[Callable[[], None]] = []
            self._admit(callbacks)
            if not self.active:
                self.notify(callbacks)
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self._step(callbacks)
            except Exception:  # a failed step must not take the server down: its sequences end, the loop goes on
                log.exception("decoding step failed; %d sequences end with an error", len(self.active))
                callbacks += [partial(s.request.on_done, "error") for s in self.active]
                self._keep([])
            self.notify(callbacks)
        self.notify([partial(s.request.on_done, "cancelled") for s in self.active])
        self._keep([])

    def _admit(self, callbacks: list) -> None:
        """Waiting requests join while slots are free: each prompt prefilled on its own."""
        while len(self.active) < self.max_active:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                return
            if request.cancelled.is_set():
                callbacks.append(partial(request.on_done, "cancelled"))
                continue
            try:
                logits, state = self.model.prefill(np.asarray([request.prompt]))
            except Exception:
                log.exception("prefill of a %d-token prompt failed", len(request.prompt))
                callbacks.append(partial(request.on_done, "error"))
                continue
            end = min(len(request.prompt) + request.max_tokens, self.model.max_seq)
            self.active.append(Sequence(request, list(request.prompt), end, np.random.default_rng(request.seed)))
            self.logits = np.concatenate([self.logits, logits[:, -1]])
            self.state = {name: np.concatenate([self.state[name], state[name]]) for name in self.state}

    def _keep(self, rows: list[int]) -> None:
        """Only these rows of the batch go on."""
        if len(rows) != len(self.active):
            self.active = [self.active[row] for row in rows]
            self.logits = self.logits[rows]
            self.state = {name: value[rows] for name, value in self.state.items()}

    def _step(self, callbacks: list) -> None:
        """A token for every active sequence, then one step graph call for those that go on."""
        picks = self.model.sample(self.logits, [s.request.temperature for s in self.active],
                                  [s.rng for s in self.active])
        going = []
        for row, (sequence, token) in enumerate(zip(self.active, picks.tolist())):
            request = sequence.request
            if request.cancelled.is_set():
                callbacks.append(partial(request.on_done, "cancelled"))
                continue
            sequence.tokens.append(token)
            callbacks.append(partial(request.on_token, token))
            if len(sequence.tokens) < sequence.end:
                going.append(row)
            else:
                callbacks.append(partial(request.on_done, "length"))
        self.stats.tokens += len(picks)
        self._keep(going)
        if self.active:
            ids = np.asarray([s.tokens[-1] for s in self.active])
            positions = np.asarray([len(s.tokens) - 1 for s in self.active])
            self.logits, self.state = self.model.step(ids, positions, self.state)
            self.stats.observe_batch(len(self.active))
