"""What a served export does under load: its HTTP server (iteralite.httpserve) on loopback, driven by N concurrent
clients that each stream completions one after another. Torch-free.

    python -m iteralite.loadtest results/export/baseline/dense results/export/int4-finetuned/<variant> \
        --clients 1 8 32

For each export and client count: generated tokens per second over the whole run (all clients), the time between a
stream's tokens (p50, p95, the first token's from the request's start), failed requests, the server's peak RSS, and
(the command line only) the decoding loop's own tokens/s under the same load without HTTP.
The study's benchmark rule runs it on every exported model (results/bench/load.csv, the report's "Serving under
load").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

COLUMNS = ["model", "clients", "requests", "failed", "tokens", "seconds", "tokens_per_s", "token_p50_ms",
           "token_p95_ms", "server_peak_rss_mb"]  # results/bench/load.csv
START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(directory, threads: int = 1, max_active: int = 32, max_queue: int = 64):
    """The export's HTTP server in its own process on a free loopback port: yields (port, pid); SIGTERM at the end
    (the server drains, then exits)."""
    port = free_port()
    command = [sys.executable, "-m", "iteralite.serve", str(directory), "--http", str(port), "--threads",
               str(threads), "--max-active", str(max_active), "--max-queue", str(max_queue)]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a server that logs much never blocks on it
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not healthy(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    log.seek(0)
                    raise RuntimeError(f"the server of {directory} did not start: {log.read().strip()[-2000:]}")
                time.sleep(0.1)
            yield port, process.pid
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM, Linux); NaN where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stream_completion(port: int, body: dict) -> tuple[list[float], int, str]:
    """POST a streaming completion; (the arrival time of each chunk, tokens generated, finish reason)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
        arrivals, tokens, reason = [], 0, None
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            arrivals.append(time.perf_counter())
            chunk = json.loads(line[6:])
            reason = chunk["choices"][0]["finish_reason"] or reason
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
        return arrivals, tokens, reason
    finally:
        connection.close()


def load(port: int, clients: int, requests: int, prompts: list[str], max_tokens: int) -> dict:
    """`clients` threads, each streaming `requests` completions one after another (greedy, the prompts in turn)."""
    gaps, tokens, failures = [], [0], []
    lock = threading.Lock()

    def client(index: int) -> None:
        for i in range(requests):
            body = {"prompt": prompts[(index + i) % len(prompts)], "max_tokens": max_tokens, "temperature": 0}
            started = time.perf_counter()
            try:
                arrivals, generated, _ = stream_completion(port, body)
            except (OSError, RuntimeError, ValueError) as err:
                with lock:
                    failures.append(str(err))
                continue
            with lock:
                gaps.extend(np.diff([started, *arrivals[:-1]]))  # the last chunk only closes the stream
                tokens[0] += generated

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    return {"clients": clients, "requests": clients * requests, "failed": len(failures), "tokens": tokens[0],
            "seconds": round(seconds, 3), "tokens_per_s": tokens[0] / seconds,
            "token_p50_ms": 1e3 * float(np.percentile(gaps, 50)) if gaps else float("nan"),
            "token_p95_ms": 1e3 * float(np.percentile(gaps, 95)) if gaps else float("nan")}


def measure(directory, client_counts: list[int], requests: int, prompts: list[str], max_tokens: int,
            threads: int = 1) -> list[dict]:
    """One server for the export, every client count in turn (a warm-up request first), its peak RSS at the end."""
    with serving(directory, threads, max_active=max(client_counts), max_queue=max(client_counts)) as (port, pid):
        stream_completion(port, {"prompt": prompts[0], "max_tokens": max_tokens, "temperature": 0})
        rows = [load(port, clients, requests, prompts, max_tokens) for clients in client_counts]
        rss = peak_rss_mb(pid)
    return [{**row, "server_peak_rss_mb": rss} for row in rows]


def engine_alone(directory, clients: int, requests: int, prompts: list[str], max_tokens: int,
                 threads: int = 1) -> float:
    """Tokens/s of the decoding loop itself (iteralite.batching) under the same load, without HTTP: `clients`
    requests at a time, `requests` rounds; what the HTTP layer and the clients cost is the difference."""
    from .batching import Engine, Request
    from .serve import OnnxModel, load_tokenizer

    model = OnnxModel.load(directory, threads)
    tokenizer = load_tokenizer(Path(directory), model.manifest)
    engine, finished = Engine(model, clients, clients).start(), threading.Semaphore(0)
    started = time.perf_counter()
    try:
        for round_ in range(requests):
            for i in range(clients):
                prompt = tokenizer.encode(prompts[(i + round_) % len(prompts)]).ids
                engine.submit(Request(prompt, max_tokens, 0.0, i, lambda token: None,
                                      lambda reason: finished.release()))
            for _ in range(clients):
                finished.acquire()
        return engine.stats.tokens / (time.perf_counter() - started)
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=4, help="completions per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt", action="append", help="prompts, in turn (default: three of the default study)")
    args = parser.parse_args()
    prompts = args.prompt or ["It is a truth universally acknowledged", "Emma Woodhouse, handsome, clever",
                              "The morning was fine"]
    print(f"{os.cpu_count()} CPUs; {args.requests} streamed completions of {args.max_tokens} tokens per client\n")
    print("| export | clients | tokens/s | vs 1 client | token p50 (ms) | p95 (ms) | failed | server peak RSS (MB) "
          "| loop alone, tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for directory in args.exports:
        rows = measure(directory, args.clients, args.requests, prompts, args.max_tokens)
        single = rows[0]["tokens_per_s"]
        for row in rows:
            alone = engine_alone(directory, row["clients"], args.requests, prompts, args.max_tokens)
            print(f"| {directory} | {row['clients']} | {row['tokens_per_s']:.0f} | {row['tokens_per_s'] / single:.1f}x "
                  f"| {row['token_p50_ms']:.2f} | {row['token_p95_ms']:.2f} | {row['failed']} | "
                  f"{row['server_peak_rss_mb']:.0f} | {alone:.0f} |")


if __name__ == "__main__":
    main()
