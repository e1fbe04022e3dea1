"""`charrnn serve` (`charrnn.serve`, `charrnn.scheduler`) as a client sees it: a real server in a
subprocess, spoken to with the official `openai` client and with httpx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TINY, assert_clean_error, doc_snippet, run_cli, train_names

import charrnn
from charrnn import Sampling

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")


def start(folder: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`charrnn serve ARGS --port 0` in a subprocess; its address from its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "serve", *args, "--port", "0"],
        cwd=folder,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env or {})),
    )
    line = proc.stderr.readline()
    assert " on http://" in line, line
    address = line.rsplit(" on ", 1)[1].strip()
    wait_until(lambda: httpx.get(f"{address}/health").status_code == 200)  # the model loads in the background
    return proc, address


def wait_until(ready: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_names(tmp_path_factory.mktemp("serve"), 60)


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[str]:
    proc, address = start(folder, "-m", "names", "--max-tokens", "1000000")
    yield address
    assert proc.poll() is None  # nothing any test sent brought it down
    stop(proc)


def client(address: str, key: str = "unused") -> object:
    return openai.OpenAI(api_key=key, base_url=f"{address}/v1", max_retries=0)


def sample(folder: Path, primes: list[str], length: int, seed: int, stop: str | None = None, **options) -> list[str]:
    """What `charrnn sample --seed` gives (its Python API, which the CLI calls): stream i per prime i."""
    return list(charrnn.load(folder / "names").samples(primes, length, Sampling(**options), seed, stop))


def test_health_and_models(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["step"] == 60 and health["checkpoint"].endswith("best.npz")
    assert health["model"] == "rnn 1x16, vocab 13"
    assert [m.id for m in client(server).models.list().data] == ["names"]


def test_each_choice_equals_charrnn_sample_with_the_same_seed(folder: Path, server: str) -> None:
    options = {"temperature": 0.8, "top_p": 0.9}
    reply = client(server).completions.create(
        model="names", prompt="al", max_tokens=30, n=3, seed=7, extra_body={"top_k": 5}, **options
    )
    expected = sample(folder, ["al"] * 3, 30, 7, temperature=0.8, top_p=0.9, top_k=5)
    assert [choice.text for choice in reply.choices] == expected
    assert {choice.finish_reason for choice in reply.choices} == {"length"}
    assert reply.usage.completion_tokens == 90 and reply.usage.prompt_tokens == 2


def test_streaming_gives_the_same_text_as_it_is_drawn(server: str) -> None:
    whole = client(server).completions.create(model="names", prompt="bo", max_tokens=40, n=2, seed=3)
    texts, reasons = ["", ""], [None, None]
    for chunk in client(server).completions.create(model="names", prompt="bo", max_tokens=40, n=2, seed=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [choice.text for choice in whole.choices] and reasons == ["length", "length"]
    with httpx.stream("POST", f"{server}/v1/completions", json={"prompt": "a", "stream": True, "max_tokens": 5}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_streamed_chunks_carry_the_logprobs_of_their_characters(server: str) -> None:
    """What the page colours by: each chunk's characters with theirs, the same as a whole
    completion's, even where a stop text held characters back."""
    asked = {"model": "names", "prompt": "a", "max_tokens": 60, "n": 2, "seed": 4, "logprobs": 2, "stop": ["ce\n"]}
    whole = client(server).completions.create(**asked)
    tokens, logprobs, offsets = [[], []], [[], []], [[], []]
    for chunk in client(server).completions.create(**asked, stream=True):
        for choice in chunk.choices:
            if choice.text:
                assert "".join(choice.logprobs.tokens) == choice.text
                tokens[choice.index] += choice.logprobs.tokens
                logprobs[choice.index] += choice.logprobs.token_logprobs
                offsets[choice.index] += choice.logprobs.text_offset
                assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    for index, choice in enumerate(whole.choices):
        assert tokens[index] == choice.logprobs.tokens and "".join(tokens[index]) == choice.text
        assert logprobs[index] == pytest.approx(choice.logprobs.token_logprobs, abs=1e-12)
        assert offsets[index] == list(range(len(choice.text)))


def test_stop_ends_a_choice_without_the_stop_text(folder: Path, server: str) -> None:
    reply = client(server).completions.create(model="names", prompt="", max_tokens=200, n=4, seed=2, stop=["\n", "ooo"])
    expected = sample(folder, [""] * 4, 200, 2, "\n")
    for choice, text in zip(reply.choices, expected, strict=True):
        assert choice.finish_reason == "stop" and choice.text + "\n" == text  # the stop text is not returned
    short = client(server).completions.create(model="names", prompt="", max_tokens=2, stop="\n", seed=2)
    assert short.choices[0].finish_reason == "length" and len(short.choices[0].text) == 2


def test_logprobs_and_echo(folder: Path, server: str) -> None:
    reply = client(server).completions.create(model="names", prompt="ca", max_tokens=6, logprobs=3, echo=True, seed=1)
    choice = reply.choices[0]
    assert choice.text.startswith("ca") and len(choice.text) == 8
    assert choice.logprobs.tokens == list(choice.text)  # the echoed prompt's characters first
    assert choice.logprobs.text_offset == list(range(8))
    prompt_nats = -sum(choice.logprobs.token_logprobs[:2])
    assert prompt_nats / 2 == pytest.approx(charrnn.load(folder / "names").score("ca"), rel=1e-5)
    for token, logprob, top in zip(
        choice.logprobs.tokens, choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True
    ):
        assert logprob <= 0 and len(top) == 3 and max(top.values()) >= logprob
        assert token not in top or top[token] == pytest.approx(logprob)


def test_score_equals_charrnn_score(folder: Path, server: str) -> None:
    records = ["alice", "xqzzk", "bob", ""]
    (folder / "records.txt").write_text("\n".join(records) + "\n")
    expected = [
        json.loads(line)
        for line in run_cli("score", "-m", "names", "records.txt", "--json", cwd=folder).stdout.splitlines()
    ]
    data = httpx.post(f"{server}/v1/score", json={"model": "names", "input": records}).json()["data"]
    assert [d["loss"] for d in data] == [e["loss"] for e in expected]
    assert [d["chars"] for d in data] == [e["chars"] for e in expected]
    one = httpx.post(f"{server}/v1/score", json={"input": "alice"}).json()["data"]
    # alone, the record takes the one-stream path (matrix-vector products), whose float32
    # rounding differs from the batch's matrix products in the last bits on AVX-512 CPUs
    assert one[0]["loss"] == pytest.approx(expected[0]["loss"], rel=1e-6)


BAD = {
    "not JSON": (b"{prompt", 400, None),
    "not an object": (b"[1, 2]", 400, None),
    "a number as the prompt": ({"prompt": 5}, 400, "prompt"),
    "max_tokens as a string": ({"prompt": "a", "max_tokens": "5"}, 400, "max_tokens"),
    "negative max_tokens": ({"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    "too many max_tokens": ({"prompt": "a", "max_tokens": 1_000_001}, 400, "max_tokens"),
    "too many choices": ({"prompt": "a", "n": 1000}, 400, "n"),
    "top_p of 0": ({"prompt": "a", "top_p": 0}, 400, "top_p"),
    "a character the model never saw": ({"prompt": "é"}, 400, "prompt"),
    "an empty stop": ({"prompt": "a", "stop": [""]}, 400, "stop"),
    "five stops": ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    "another model": ({"model": "gpt-4", "prompt": "a"}, 404, "model"),
    "a body too large": ({"prompt": "a" * (2 << 20)}, 413, None),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server: str, case: str) -> None:
    body, status, param = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["message"] and error["type"] and error["param"] == param and "code" in error
    assert httpx.get(f"{server}/health").status_code == 200


def test_an_api_key_is_required_when_set(folder: Path) -> None:
    proc, address = start(folder, "-m", "names", env={"CHARRNN_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError):
            client(address, "wrong").completions.create(model="names", prompt="a", max_tokens=3)
        assert httpx.post(f"{address}/v1/completions", json={"prompt": "a"}).status_code == 401
        assert len(client(address, "s3cret").completions.create(model="names", prompt="a", max_tokens=3).choices) == 1
    finally:
        stop(proc)


def test_a_client_that_goes_away_frees_its_stream(server: str) -> None:
    body = {"prompt": "a", "stream": True, "max_tokens": 1_000_000, "n": 4}  # minutes, unless freed
    with httpx.stream("POST", f"{server}/v1/completions", json=body) as reply:
        lines = reply.iter_lines()  # held: a dropped iterator would close the response
        next(lines)
        assert httpx.get(f"{server}/health").json()["active_streams"] > 0
    deadline = time.monotonic() + 30
    while httpx.get(f"{server}/health").json()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server}/health").json()["active_streams"] == 0


def test_reload_during_a_live_train_fails_no_request_and_a_bad_checkpoint_keeps_the_model(folder: Path) -> None:
    run = ["-o", "live", *TINY, "-s", "train.eval_every=5", "-q"]
    assert run_cli("train", "names.txt", *run, "--steps", "5", cwd=folder).returncode == 0
    proc, address = start(folder, "-m", "live")
    try:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "train", "names.txt", *run, "--steps", "60"], cwd=folder
        )
        statuses, steps = [], set()
        while trainer.poll() is None:
            reply = httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 20})
            statuses.append(reply.status_code)
            steps.add(httpx.get(f"{address}/health").json()["step"])
        assert trainer.returncode == 0 and set(statuses) == {200}
        wait_until(lambda: httpx.get(f"{address}/health").json()["step"] == 65)  # loaded in the background
        assert len(steps) >= 2  # the model moved on while training, without a restart
        broken = folder / "live" / ".broken"
        broken.write_bytes(b"PK\x03\x04 not a checkpoint")
        os.replace(broken, folder / "live" / "best.npz")
        assert httpx.get(f"{address}/health").json()["step"] == 65
        assert httpx.post(f"{address}/v1/completions", json={"prompt": "a", "max_tokens": 5}).status_code == 200
    finally:
        err = stop(proc)
    assert sum("keeping the model of step 65" in line for line in err.splitlines()) == 1


def test_sigterm_finishes_the_request_in_flight_then_exits(folder: Path) -> None:
    proc, address = start(folder, "-m", "names")
    replies: list = []
    request = threading.Thread(
        target=lambda: replies.append(
            httpx.post(f"{address}/v1/completions", json={"max_tokens": 4000, "n": 64}, timeout=120)
        )
    )
    request.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    request.join(timeout=120)
    assert replies and replies[0].status_code == 200
    assert proc.wait(timeout=60) == -signal.SIGTERM  # as uvicorn ends, after the requests in flight: 143 in a shell
    assert [len(choice["text"]) for choice in replies[0].json()["choices"]] == [4000] * 64


def test_a_port_in_use_is_one_line(folder: Path, server: str) -> None:
    port = server.rsplit(":", 1)[1]
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "serve", "-m", "names", "--port", port],
        cwd=folder,
        capture_output=True,
        timeout=60,
    )
    assert_clean_error(proc, 1, f"cannot listen on 127.0.0.1:{port}")


def test_the_docs_client_snippet_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "play.txt").write_text("ROMEO: good night, sweet\nJULIET: hello there\n\n" * 100)
    run = ["-o", "runs/nightly", *TINY, "--steps", "5", "-q"]
    assert run_cli("train", "play.txt", *run, cwd=tmp_path).returncode == 0
    proc, address = start(tmp_path, "-m", "runs/nightly")
    try:
        snippet = doc_snippet("docs/serving.md", "# Serving a model")
        exec(compile(snippet.replace("http://127.0.0.1:8000", address), "docs/serving.md", "exec"), {})
        assert len(capsys.readouterr().out) > 0  # the streamed completion
    finally:
        stop(proc)


def test_a_missing_serve_extra_is_one_line(folder: Path) -> None:
    code = "import sys; sys.modules['uvicorn'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "serve", "-m", "names"], cwd=folder, capture_output=True)
    assert_clean_error(proc, 1, "pip install 'charrnn[serve]'")
