"""The HTTP server of an export directory: OpenAI-compatible completions for many users at once, torch-free.

    python -m iteralite.serve results/export/<stage>/<variant> --http 8000 [--host 127.0.0.1]

Endpoints: `POST /v1/completions` (prompt, max_tokens, temperature, seed, stream as server-sent events), `GET /health`
and `GET /metrics` (Prometheus' text format). Requests share one decoding loop (iteralite.batching: continuous
batching over the step graph). The export and its checks are fixed at start: serve.py loads and checks the model
and tokenizer and hands them here (this module imports nothing of serve.py, whose command line starts it); no
request names a file.

Limits: at most `max_active` sequences decode at once and `max_queue` wait; past them a request gets 429 with
Retry-After, and 503 once SIGTERM started the drain (running requests finish, then the process exits). A body over
64 KiB gets 413, one that is not JSON 400, a field out of range 422 naming it; a client that disconnects frees its
slot at the next step.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .batching import BATCH_BUCKETS, Busy, Engine, StepModel
from .batching import Request as Completion

MAX_BODY_BYTES = 64 << 10
MAX_TEMPERATURE = 2.0  # OpenAI's range
DEFAULT_MAX_TOKENS = 16  # OpenAI's default
RETRY_AFTER_S = "1"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class FieldError(ValueError):
    """A request field out of range: 422 with the message, which names the field."""


class BodyError(ValueError):
    """A body that is not JSON: 400."""


@dataclass
class Limits:
    max_active: int = 32
    max_queue: int = 64


class Histogram:
    """A Prometheus histogram: counts per upper bound (cumulative when rendered), sum and count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]


class Metrics:
    def __init__(self):
        self.responses: dict[int, int] = {}
        self.prompt_tokens = 0
        self.request_seconds = Histogram(LATENCY_BUCKETS)
        self.token_seconds = Histogram(TOKEN_BUCKETS)

    def render(self, engine: Engine) -> str:
        lines = ["# HELP iteralite_requests_total Completion requests answered, by HTTP status.",
                 "# TYPE iteralite_requests_total counter",
                 *(f'iteralite_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.responses.items())),
                 "# HELP iteralite_prompt_tokens_total Prompt tokens prefilled.",
                 "# TYPE iteralite_prompt_tokens_total counter", f"iteralite_prompt_tokens_total {self.prompt_tokens}",
                 "# HELP iteralite_generated_tokens_total Tokens generated.",
                 "# TYPE iteralite_generated_tokens_total counter",
                 f"iteralite_generated_tokens_total {engine.stats.tokens}",
                 "# HELP iteralite_active_sequences Sequences in the decoding batch.",
                 "# TYPE iteralite_active_sequences gauge", f"iteralite_active_sequences {len(engine.active)}",
                 "# HELP iteralite_queue_depth Requests waiting for a slot.",
                 "# TYPE iteralite_queue_depth gauge", f"iteralite_queue_depth {engine.waiting.qsize()}",
                 "# HELP iteralite_batch_size Sequences per step of the step graph.",
                 "# TYPE iteralite_batch_size histogram"]
        running = 0
        for bound, count in zip(BATCH_BUCKETS, engine.stats.batch_counts):
            running += count
            lines.append(f'iteralite_batch_size_bucket{{le="{bound}"}} {running}')
        lines += [f'iteralite_batch_size_bucket{{le="+Inf"}} {engine.stats.steps}',
                  "# HELP iteralite_request_seconds Time from a request's arrival to its last token.",
                  "# TYPE iteralite_request_seconds histogram",
                  *self.request_seconds.lines("iteralite_request_seconds"),
                  "# HELP iteralite_time_per_token_seconds Time between a sequence's tokens (the first from arrival).",
                  "# TYPE iteralite_time_per_token_seconds histogram",
                  *self.token_seconds.lines("iteralite_time_per_token_seconds")]
        return "\n".join(lines) + "\n"


@dataclass
class Settings:
    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int
    stream: bool


def parse(body: bytes, tokenizer, max_seq: int) -> Settings:
    """The completion request's fields, checked; FieldError names the first field out of range."""
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BodyError(f"body: not JSON ({err})") from None
    if not isinstance(fields, dict):
        raise FieldError("body: must be a JSON object")

    def number(name, default, kind, low, high):
        value = fields.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            raise FieldError(f"{name}: must be {'an integer' if kind is int else 'a number'} from {low} to {high}, "
                             f"got {value!r}")
        return value

    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise FieldError("prompt: must be a string")
    ids = tokenizer.encode(prompt).ids
    if not 1 <= len(ids) <= max_seq:
        raise FieldError(f"prompt: {len(ids)} tokens; the model takes 1 to {max_seq} (its window)")
    if fields.get("n", 1) != 1:
        raise FieldError("n: only 1 completion per request")
    stream = fields.get("stream", False)
    if not isinstance(stream, bool):
        raise FieldError(f"stream: must be true or false, got {stream!r}")
    seed = fields.get("seed")
    return Settings(ids, number("max_tokens", DEFAULT_MAX_TOKENS, int, 1, max_seq),
                    float(number("temperature", 1.0, (int, float), 0.0, MAX_TEMPERATURE)),
                    secrets.randbits(63) if seed is None else number("seed", 0, int, 0, 2**63 - 1), stream)


class Completions:
    """Text out of the engine's tokens: a running completion's new text, emitted once its bytes are whole (a
    byte-level BPE token may end inside a UTF-8 character, which decodes as U+FFFD until the next one)."""

    def __init__(self, text_of: Callable[[list[int]], str]):
        self.text_of = text_of

    def new_text(self, tokens: list[int], sent: str, final: bool) -> str:
        text = self.text_of(tokens)
        if (text.endswith("\ufffd") and not final) or not text.startswith(sent):
            return ""
        return text[len(sent):]


def create_app(engine: Engine, tokenizer, text_of: Callable[[list[int]], str], model_id: str) -> Starlette:
    """The routes over a running engine (prompts encoded by `tokenizer`, completions decoded by `text_of`), whose
    callbacks the app moves onto its event loop (one hop per step)."""
    metrics, completions = Metrics(), Completions(text_of)
    max_seq = engine.model.max_seq

    @asynccontextmanager
    async def attached(app):
        loop = asyncio.get_running_loop()
        engine.notify = lambda callbacks: loop.call_soon_threadsafe(run_all, callbacks) if callbacks else None
        yield

    def answer(status: int, content: dict, headers: dict | None = None) -> JSONResponse:
        metrics.responses[status] = metrics.responses.get(status, 0) + 1
        return JSONResponse(content, status, headers)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        kind = {400: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_exceeded", 503: "server_shutting_down"}.get(status, "server_error")
        return answer(status, {"error": {"message": message, "type": kind}}, headers)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise OverflowError
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise OverflowError
        return body

    async def complete(request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            settings = parse(await read_body(request), tokenizer, max_seq)
        except OverflowError:
            return error(413, f"body: more than {MAX_BODY_BYTES} bytes")
        except BodyError as err:
            return error(400, str(err))
        except FieldError as err:
            return error(422, str(err))
        except ClientDisconnect:
            return Response(status_code=499)
        events: asyncio.Queue = asyncio.Queue()
        last = [arrived]

        def on_token(token: int) -> None:  # on the event loop (Engine.notify)
            now = time.perf_counter()
            metrics.token_seconds.observe(now - last[0])
            last[0] = now
            events.put_nowait(("token", token))

        def on_done(reason: str) -> None:
            events.put_nowait(("done", reason))

        job = Completion(settings.prompt, settings.max_tokens, settings.temperature, settings.seed, on_token, on_done)
        try:
            engine.submit(job)
        except Busy as err:
            draining = engine.draining.is_set()
            return error(503 if draining else 429, str(err), {"Retry-After": RETRY_AFTER_S})
        metrics.prompt_tokens += len(settings.prompt)
        identity = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                    "model": model_id}

        def usage(generated: list[int]) -> dict:
            return {"prompt_tokens": len(settings.prompt), "completion_tokens": len(generated),
                    "total_tokens": len(settings.prompt) + len(generated)}

        if settings.stream:
            async def chunks():
                """One server-sent event per token; the events already queued go out in one write (a client that
                reads slower than the loop decodes gets several at once instead of one send per token)."""
                generated, sent = [], ""
                try:
                    while True:
                        pending, events_out = [await events.get()], []
                        while not events.empty():
                            pending.append(events.get_nowait())
                        for kind, value in pending:
                            if kind == "token":
                                generated.append(value)
                            text = completions.new_text(generated, sent, kind == "done")
                            sent += text
                            if text or kind == "done":
                                choice = {"text": text, "index": 0, "logprobs": None,
                                          "finish_reason": value if kind == "done" else None}
                                chunk = {**identity, "choices": [choice]}
                                if kind == "done":
                                    chunk["usage"] = usage(generated)
                                events_out.append(f"data: {json.dumps(chunk)}\n\n")
                            if kind == "done":
                                metrics.request_seconds.observe(time.perf_counter() - arrived)
                                yield "".join(events_out) + "data: [DONE]\n\n"
                                return
                        if events_out:
                            yield "".join(events_out)
                finally:
                    job.cancelled.set()  # the client left mid-stream (or it ended): the slot frees at the next step

            metrics.responses[200] = metrics.responses.get(200, 0) + 1
            return StreamingResponse(chunks(), media_type="text/event-stream")

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        generated, reason = [], None
        try:
            while reason is None:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    job.cancelled.set()
                    return Response(status_code=499)
                kind, value = getter.result()
                if kind == "token":
                    generated.append(value)
                else:
                    reason = value
        finally:
            watcher.cancel()
        if reason == "error":
            return error(500, "decoding failed; the server logged why")
        metrics.request_seconds.observe(time.perf_counter() - arrived)
        text = completions.new_text(generated, "", True)
        return answer(200, {**identity, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                     "finish_reason": reason}], "usage": usage(generated)})

    async def health(request: Request) -> Response:
        status = "draining" if engine.draining.is_set() else "ok"
        return JSONResponse({"status": status, "model": model_id, "active": len(engine.active),
                             "waiting": engine.waiting.qsize()}, 503 if status == "draining" else 200)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/v1/completions", complete, methods=["POST"]),
                             Route("/health", health), Route("/metrics", prometheus)], lifespan=attached)


def run_all(callbacks: list) -> None:
    for callback in callbacks:
        callback()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or SIGINT first refuses new completions (503): uvicorn then stops
    accepting connections and waits for the running ones to finish."""

    def __init__(self, config: uvicorn.Config, engine: Engine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig, frame) -> None:
        self.engine.draining.set()
        super().handle_exit(sig, frame)


def run(model: StepModel, tokenizer, text_of: Callable[[list[int]], str], model_id: str, host: str, port: int,
        limits: Limits) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    engine = Engine(model, limits.max_active, limits.max_queue).start()
    config = uvicorn.Config(create_app(engine, tokenizer, text_of, model_id), host=host, port=port,
                            log_level="warning", timeout_graceful_shutdown=None,
                            limit_concurrency=limits.max_active + limits.max_queue + 16)
    try:
        DrainingServer(config, engine).run()
    finally:
        engine.stop()
