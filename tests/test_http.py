"""Serving many users at once over HTTP (iteralite.httpserve, batching, loadtest): a real server on loopback."""

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from functools import partial

import pytest
import torch
import uvicorn

from iteralite import httpserve, loadtest, serve
from iteralite.architectures.itera_lite.config import Config as IteraLiteConfig
from iteralite.architectures.itera_lite.model import Model as IteraLiteModel
from iteralite.batching import Engine
from iteralite.stages import export as export_stage

WINDOW = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An itera_lite model of 256 positions exported by the rule's stage function, with its tokenizer."""
    from test_export import SETTINGS, outputs, saved, tokens_and_tokenizer

    tmp_path = tmp_path_factory.mktemp("http")
    torch.manual_seed(0)
    model = IteraLiteModel(IteraLiteConfig(vocab_size=300, d_model=32, n_layers=2, max_seq=WINDOW, d_inner=64,
                                           d_state=4, n_experts=4, expert_hidden=16, top_k=2)).eval()
    tokens_path, tokenizer_path = tokens_and_tokenizer(tmp_path)
    directory = tmp_path / "export"
    export_stage.export("finetuned/x", saved(model, tmp_path, False), tokens_path, tokenizer_path, SETTINGS,
                        outputs(directory))
    return directory


@pytest.fixture(scope="module")
def served(exported):
    with loadtest.serving(exported) as (port, pid):
        yield port


def post(port: int, body, raw: bytes | None = None) -> tuple[int, http.client.HTTPMessage, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/completions", raw if raw is not None else json.dumps(body),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    content = response.read()
    return response.status, response.headers, json.loads(content) if content else {}


def get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    return connection.getresponse().read().decode()


def streamed_text(port: int, body: dict) -> tuple[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}))
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    text, reason, lines = "", None, [line for line in response if line.startswith(b"data: ")]
    assert lines[-1] == b"data: [DONE]\n"
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        text, reason = text + choice["text"], choice["finish_reason"] or reason
    return text, reason


def test_32_concurrent_clients_get_every_completion_each_as_generated_alone(served, exported):
    """32 requests at once (half streamed), each with its own prompt and seed: none lost or failed, each text the
    one its prompt and seed give alone (OnnxModel.generate), and the steps really ran batches of many."""
    model = serve.OnnxModel.load(exported)
    tokenizer = serve.load_tokenizer(exported, model.manifest)
    bodies = [{"prompt": f"word{i} other{i % 13} thing{i % 7}.", "max_tokens": 40, "temperature": 0.8, "seed": i}
              for i in range(32)]
    results = [None] * 32

    def client(i):
        if i % 2:
            results[i] = streamed_text(served, bodies[i])
        else:
            status, _, content = post(served, bodies[i])
            assert status == 200, content
            results[i] = content["choices"][0]["text"], content["choices"][0]["finish_reason"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for body, result in zip(bodies, results):
        prompt = tokenizer.encode(body["prompt"]).ids
        alone = model.generate(prompt, 40, 0.8, body["seed"])[len(prompt):]
        assert result == (serve.decode(tokenizer, alone), "length")
    metrics = get(served, "/metrics")
    assert 'iteralite_requests_total{status="200"} 32' in metrics
    assert "iteralite_generated_tokens_total 1280" in metrics
    single_steps = int(next(line.split()[-1] for line in metrics.splitlines()
                            if line.startswith('iteralite_batch_size_bucket{le="1"}')))
    all_steps = int(next(line.split()[-1] for line in metrics.splitlines()
                         if line.startswith('iteralite_batch_size_bucket{le="+Inf"}')))
    assert all_steps - single_steps > 10  # steps that decoded several sequences at once


@pytest.mark.parametrize("body, status, message", [
    (None, 400, "body: not JSON"),
    ([1, 2], 422, "body: must be a JSON object"),
    ({"max_tokens": 4}, 422, "prompt: must be a string"),
    ({"prompt": ""}, 422, "prompt: 0 tokens; the model takes 1 to 256 (its window)"),
    ({"prompt": "word1 " * 300}, 422, "tokens; the model takes 1 to 256 (its window)"),
    ({"prompt": "word1", "max_tokens": 0}, 422, "max_tokens: must be an integer from 1 to 256, got 0"),
    ({"prompt": "word1", "max_tokens": "5"}, 422, "max_tokens: must be an integer from 1 to 256, got '5'"),
    ({"prompt": "word1", "temperature": 2.5}, 422, "temperature: must be a number from 0.0 to 2.0, got 2.5"),
    ({"prompt": "word1", "seed": -1}, 422, "seed: must be an integer from 0 to"),
    ({"prompt": "word1", "stream": "yes"}, 422, "stream: must be true or false"),
    ({"prompt": "word1", "n": 2}, 422, "n: only 1 completion per request"),
    ({"prompt": "word1 " * 20000}, 413, "body: more than 65536 bytes"),
])
def test_bad_requests_get_a_status_naming_the_field_and_the_server_goes_on(served, body, status, message):
    code, _, content = post(served, body, raw=b"{not json" if body is None else None)
    assert code == status and message in content["error"]["message"]
    code, _, content = post(served, {"prompt": "word1 other2", "max_tokens": 3, "temperature": 0})
    assert code == 200 and content["usage"]["completion_tokens"] == 3


class Slowed:
    """The export's model with every step 10 ms slower: requests stay in flight long enough to be crowded out or
    abandoned on purpose."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def step(self, *args):
        time.sleep(0.01)
        return self.model.step(*args)


@contextmanager
def in_process(exported, max_active: int, max_queue: int):
    model = serve.OnnxModel.load(exported)
    engine = Engine(Slowed(model), max_active, max_queue).start()
    tokenizer = serve.load_tokenizer(exported, model.manifest)
    app = httpserve.create_app(engine, tokenizer, partial(serve.decode, tokenizer), "x")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=loadtest.free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield server.config.port, engine
    finally:
        server.should_exit = True
        thread.join()
        engine.stop()


def first_chunk(port: int, body: dict) -> socket.socket:
    """A streaming request on a raw socket, read up to its first token; the socket stays open."""
    client = socket.create_connection(("127.0.0.1", port))
    payload = json.dumps({**body, "stream": True}).encode()
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    received = b""
    while b"data: " not in received:
        received += client.recv(4096)
    return client


def test_past_the_slots_and_the_queue_a_request_gets_429_with_retry_after(exported):
    with in_process(exported, max_active=1, max_queue=1) as (port, engine):
        running = first_chunk(port, {"prompt": "word1", "max_tokens": 200, "temperature": 0})
        waiting = threading.Thread(target=post, args=(port, {"prompt": "word2", "max_tokens": 2}))
        waiting.start()
        while engine.waiting.qsize() < 1:
            time.sleep(0.005)
        status, headers, content = post(port, {"prompt": "word3", "max_tokens": 2})
        assert status == 429 and headers["Retry-After"] == "1"
        assert "1 sequences are decoding and 1 requests waiting" in content["error"]["message"]
        running.close()
        waiting.join()


def test_a_client_that_disconnects_mid_stream_frees_its_slot(exported):
    with in_process(exported, max_active=1, max_queue=0) as (port, engine):
        first_chunk(port, {"prompt": "word1", "max_tokens": 250, "temperature": 0}).close()
        deadline = time.monotonic() + 5
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not engine.active and engine.stats.tokens < 100  # gone long before its 250 tokens
        status, _, content = post(port, {"prompt": "word2", "max_tokens": 2})
        assert status == 200 and content["usage"]["completion_tokens"] == 2


def test_sigterm_lets_the_running_requests_finish_then_exits(exported):
    port = loadtest.free_port()
    process = subprocess.Popen([sys.executable, "-m", "iteralite.serve", str(exported), "--http", str(port)],
                               stderr=subprocess.PIPE, text=True)
    try:
        while not loadtest.healthy(port):
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        clients = [first_chunk(port, {"prompt": f"word{i}", "max_tokens": 250, "temperature": 0}) for i in range(4)]
        process.send_signal(signal.SIGTERM)
        for client in clients:
            received = b""
            while b"data: [DONE]" not in received:
                chunk = client.recv(65536)
                if not chunk:
                    break
                received += chunk
            assert b"data: [DONE]" in received and b'"completion_tokens": 250' in received
        assert process.wait(30) == -signal.SIGTERM  # uvicorn re-raises the signal once it has drained
        assert not loadtest.healthy(port)
    finally:
        process.kill()


def test_a_tokenizer_swapped_with_the_manifest_rewritten_to_match_is_refused(exported, tmp_path):
    import shutil

    from iteralite.architectures.itera_lite.tokenizer import itera_lite_tokenizer

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    small = itera_lite_tokenizer({"<UNK>": 1, **{f"w{i}": i + 2 for i in range(8)}}, "word")
    (copy / "tokenizer.json").write_text(small.to_str())
    manifest = json.loads((copy / "export.json").read_text())
    manifest["tokenizer_sha256"] = serve.sha256_bytes((copy / "tokenizer.json").read_bytes())
    (copy / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(serve.ServeError, match="model.onnx: exported with the tokenizer of SHA-256 .*, but export.json "
                                               "names .*: the tokenizer was replaced"):
        serve.OnnxModel.load(copy)
