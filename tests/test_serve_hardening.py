"""`charrnn serve` against a hostile or unlucky client: bounded fan-out and streams in flight,
slow and stalled connections, malformed bodies, the key on every endpoint, internal faults,
loading and reloading in the background, and `/metrics` read with Prometheus' own parser.
Timings (how fast /health answers during each attack) are measured in
`benchmarks/serve_attacks.py`; here, what is answered, in what order, and what is logged."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import train_names
from test_serve import start, stop, wait_until

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
prometheus_parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_names(tmp_path_factory.mktemp("hardening"), 30)


@pytest.fixture(scope="module")
def guarded(folder: Path) -> tuple[str, list[str]]:
    """A server with small limits: 8 streams in flight, 20 connections, 1 s for a client (and
    choices as long as a test needs to hold them)."""
    limits = ["--max-streams", "8", "--max-connections", "20", "--client-timeout", "1", "--max-tokens", "1000000"]
    proc, address = start(folder, "-m", "names", *limits)
    log: list[str] = []
    yield address, log
    assert proc.poll() is None
    log.extend(stop(proc).splitlines())
    assert not [line for line in log if "Traceback" in line or line.startswith("  File ")], log


def test_a_fan_out_past_the_limit_is_refused_at_once(guarded: tuple) -> None:
    address, _ = guarded
    reply = httpx.post(f"{address}/v1/completions", json={"prompt": ["a"] * 2000, "n": 64, "max_tokens": 1})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "too_many_choices" and "at most 128" in error["message"]


def test_past_the_streams_in_flight_a_request_gets_429_with_retry_after(guarded: tuple) -> None:
    address, _ = guarded
    body = {"prompt": "a", "stream": True, "max_tokens": 1_000_000, "n": 8}  # all 8 places, for minutes
    with httpx.stream("POST", f"{address}/v1/completions", json=body) as held:
        lines = held.iter_lines()
        next(lines)
        refused = httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(api_key="x", base_url=f"{address}/v1", max_retries=0).completions.create(
                model="names", prompt="a", max_tokens=2
            )
    wait_until(lambda: httpx.get(f"{address}/health").json()["active_streams"] == 0)
    assert httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_a_non_streaming_client_that_leaves_frees_its_streams(guarded: tuple) -> None:
    address, _ = guarded
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 1_000_000, "n": 8}, timeout=1)
    wait_until(lambda: httpx.get(f"{address}/health").json()["active_streams"] == 0)
    assert httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 2, "n": 8}).status_code == 200


def _raw(address: str) -> socket.socket:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def test_a_client_that_sends_its_headers_too_slowly_is_closed(guarded: tuple) -> None:
    address, _ = guarded
    with _raw(address) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert slow.recv(1) == b""  # closed by the server (after --client-timeout 1)


def test_a_body_that_never_comes_is_a_408_and_a_huge_one_a_413(guarded: tuple) -> None:
    address, _ = guarded
    for length, status in [(1000, b" 408 "), (99999999999, b" 413 ")]:
        with _raw(address) as sock:
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{".encode())
            assert status in sock.recv(1024).split(b"\r\n")[0] + b" "


def test_slow_connections_past_the_limit_never_keep_a_normal_client_out(guarded: tuple) -> None:
    """30 connections that send half a request line (over the limit of 20): the slowest waiting
    ones are closed as new ones come, a normal client is served, and the server holds no more
    sockets than its limit."""
    address, _ = guarded
    slow = [_raw(address) for _ in range(30)]
    try:
        for sock in slow:
            sock.sendall(b"GET /he")
        assert httpx.get(f"{address}/health", timeout=10).status_code == 200
        closed = 0
        for sock in slow:
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                closed += sock.recv(1) == b""
        assert closed >= 10
    finally:
        for sock in slow:
            sock.close()


def test_malformed_bodies_get_openai_errors(guarded: tuple) -> None:
    address, _ = guarded
    bodies = {
        "max_tokens of 5,000 digits": b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",
        "nested 100,000 deep": b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "not UTF-8": b'{"prompt": "\xff"}',
    }
    for name, body in bodies.items():
        reply = httpx.post(f"{address}/v1/completions", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, name
        assert reply.json()["error"]["code"] == "invalid_json", name


def test_a_client_that_leaves_while_sending_its_body_leaves_no_traceback(guarded: tuple) -> None:
    address, _ = guarded
    with _raw(address) as sock:
        sock.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt"')
    assert httpx.get(f"{address}/health").status_code == 200  # the guarded fixture checks the log at the end


def test_a_temperature_that_overflows_the_logits_samples_greedily(guarded: tuple) -> None:
    address, _ = guarded
    texts = [
        httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 30, "temperature": t}).json()
        for t in (1e-320, 0)
    ]
    assert texts[0]["choices"][0]["text"] == texts[1]["choices"][0]["text"]


def test_echo_logprobs_and_no_tokens_score_the_prompt(folder: Path, guarded: tuple) -> None:
    import charrnn

    address, _ = guarded
    body = {"prompt": "alice", "echo": True, "logprobs": 1, "max_tokens": 0}
    choice = httpx.post(f"{address}/v1/completions", json=body).json()["choices"][0]
    assert choice["text"] == "alice" and choice["logprobs"]["tokens"] == list("alice")
    assert choice["logprobs"]["text_offset"] == [0, 1, 2, 3, 4]
    total = sum(choice["logprobs"]["token_logprobs"])
    assert total == pytest.approx(-charrnn.load(folder / "names").score("alice") * 5, rel=1e-5)


def test_a_long_echo_is_built_off_the_event_loop(guarded: tuple) -> None:
    """A 16,000-character prompt echoed with 20 log-probabilities each: a small request sent
    while its reply is being made is answered first."""
    address, _ = guarded
    done: list[str] = []
    big = {"prompt": "alice\nbob\n" * 1600, "echo": True, "logprobs": 20, "max_tokens": 1, "n": 4}

    def send_big() -> None:
        reply = httpx.post(f"{address}/v1/completions", json=big, timeout=120)
        assert reply.status_code == 200 and reply.json()["choices"][3]["logprobs"]["text_offset"][-1] == 16_000
        done.append("big")

    thread = threading.Thread(target=send_big)
    thread.start()
    wait_until(lambda: httpx.get(f"{address}/health").json()["waiting_streams"] + len(done) > 0, 60)
    assert httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 1}).status_code == 200
    done.append("small")
    thread.join(120)
    assert done == ["small", "big"]


def test_the_key_guards_every_endpoint_but_a_bare_health(folder: Path) -> None:
    proc, address = start(folder, "-m", "names", "--api-key", "s3cret")
    try:
        assert httpx.get(f"{address}/health").json() == {"status": "ok"}  # up, and nothing more
        key = {"authorization": "Bearer s3cret"}
        assert httpx.get(f"{address}/health", headers=key).json()["step"] == 30
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions")]:
            assert httpx.request(method, f"{address}{path}").status_code == 401, path
            assert (
                httpx.request(method, f"{address}{path}", headers={"authorization": "Bearer s3cre"}).status_code == 401
            )
        assert httpx.get(f"{address}/v1/models", headers=key).status_code == 200
        assert httpx.post(f"{address}/v1/score", json={"input": "bob"}, headers=key).status_code == 200
    finally:
        stop(proc)


def test_metrics_in_prometheus_text_format(folder: Path) -> None:
    proc, address = start(folder, "-m", "names")
    try:
        httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 7, "n": 3})
        httpx.post(f"{address}/v1/completions", json={"prompt": "é"})  # a 400
        text = httpx.get(f"{address}/metrics").text
    finally:
        stop(proc)
    families = {family.name: family for family in prometheus_parser.text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("charrnn_requests_total", (("endpoint", "completions"), ("status", "200")))] == 1
    assert samples[("charrnn_requests_total", (("endpoint", "completions"), ("status", "400")))] == 1
    assert samples[("charrnn_characters_generated_total", ())] == 21
    assert samples[("charrnn_request_seconds_count", (("endpoint", "completions"),))] == 2
    assert families["charrnn_request_seconds"].type == "histogram"
    assert samples[("charrnn_streams_active", ())] == 0 and samples[("charrnn_streams_waiting", ())] == 0
    assert samples[("charrnn_model_step", ())] == 30
    assert abs(samples[("charrnn_model_loaded_timestamp_seconds", ())] - time.time()) < 600


def test_deleted_checkpoints_keep_the_loaded_model_serving(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "gone"
    run.mkdir()
    for name in ("best.npz", "latest.npz", "config.yaml"):
        (run / name).write_bytes((folder / "names" / name).read_bytes())
    proc, address = start(tmp_path, "-m", "gone")
    try:
        os.remove(run / "best.npz")
        os.remove(run / "latest.npz")
        assert httpx.get(f"{address}/v1/models").status_code == 200
        assert httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 3}).status_code == 200
    finally:
        err = stop(proc)
    assert "Traceback" not in err


# In-process: the app over a Server, with Starlette's test client (and OpenAI's client on it).


@pytest.fixture
def app_for(folder: Path, monkeypatch: pytest.MonkeyPatch):
    from starlette.testclient import TestClient

    from charrnn import checkpoint, serve
    from charrnn.openai_api import Limits

    gate = threading.Event()
    original = checkpoint.load

    def held_load(path: Path) -> object:
        assert gate.wait(60)
        return original(path)

    def make(gated: bool = False) -> tuple[TestClient, threading.Event]:
        if gated:
            monkeypatch.setattr(serve.checkpoint, "load", held_load)
        else:
            gate.set()
        server = serve.Server(str(folder / "names"), Limits(), None)
        return TestClient(serve.build_app(server)), gate

    return make


def test_health_is_503_loading_until_the_model_is_loaded(app_for) -> None:
    client, gate = app_for(gated=True)
    with client:
        reply = client.get("/health")
        assert reply.status_code == 503 and reply.json() == {"status": "loading"}
        busy = client.post("/v1/completions", json={"prompt": "a"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        gate.set()
        wait_until(lambda: client.get("/health").status_code == 200)


def test_a_reload_loads_beside_the_served_model(app_for, folder: Path, tmp_path: Path) -> None:
    """While a new checkpoint is loading (held here), requests are answered by the old model;
    then the new one is served."""
    client, gate = app_for()
    with client:
        wait_until(lambda: client.get("/health").status_code == 200)
        gate.clear()
        from charrnn import serve

        holder_load = serve.checkpoint.load
        held = threading.Event()

        def slow(path: Path) -> object:
            held.set()
            assert gate.wait(60)
            return holder_load(path)

        serve.checkpoint.load = slow
        try:
            best = folder / "names" / "best.npz"
            os.utime(best, ns=(time.time_ns(), time.time_ns()))  # a new signature: a reload starts
            assert client.get("/health").json()["step"] == 30
            assert held.wait(30)
            reply = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 5})
            assert reply.status_code == 200 and len(reply.json()["choices"][0]["text"]) <= 5
            gate.set()
        finally:
            serve.checkpoint.load = holder_load


def test_a_fault_while_streaming_reaches_the_client_as_an_error(app_for, monkeypatch: pytest.MonkeyPatch) -> None:
    from charrnn import scheduler

    client, _ = app_for()

    def broken(self: object) -> None:
        raise RuntimeError("a fault")

    monkeypatch.setattr(scheduler._Group, "step", broken)
    with client:
        wait_until(lambda: client.get("/health").status_code == 200)
        api = openai.OpenAI(api_key="x", base_url="http://testserver/v1", http_client=client, max_retries=0)
        with pytest.raises(openai.APIError, match="failed"):
            for _ in api.completions.create(model="names", prompt="a", max_tokens=5, stream=True):
                pass
        reply = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 5})
        assert reply.status_code == 500 and reply.json()["error"]["type"] == "server_error"
