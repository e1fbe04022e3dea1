"""OpenAI's completions protocol as `charrnn.openai_api` checks and shapes it, without a server:
a request into a `Completion`, each refusal as OpenAI's error object, logprobs and chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import charrnn
from charrnn.config import build_config
from charrnn.model import init_params
from charrnn.openai_api import ApiError, Completion, Limits, chunk, logprobs_json
from charrnn.rundir import create_run
from charrnn.sample import Sampling
from charrnn.scheduler import Logprobs
from charrnn.vocab import Vocab

LIMITS = Limits(max_tokens=100, max_n=4, max_body=1 << 10)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> charrnn.LanguageModel:
    config = build_config([{"model": {"cell": "rnn", "hidden_size": 8, "num_layers": 1}}])
    vocab = Vocab.from_chars("abc\n")
    params = init_params(config.model.shape(len(vocab)), np.random.default_rng(0), np.dtype(np.float32))
    path: Path = tmp_path_factory.mktemp("api") / "run"
    create_run(path, config, vocab, params)
    return charrnn.load(path)


def test_defaults_are_openai_s(lm: charrnn.LanguageModel) -> None:
    request = Completion.parse({}, lm, LIMITS)
    assert request.prompts == [""] and request.n == 1 and request.max_tokens == 16
    assert request.sampling == Sampling() and request.seed is None and request.stops == ()
    assert not request.stream and not request.echo and request.logprobs is None


def test_a_full_request_is_read_field_by_field(lm: charrnn.LanguageModel) -> None:
    body = {"prompt": ["ab", "c"], "n": 2, "max_tokens": 0, "temperature": 0.5, "top_p": 0.9, "top_k": 2}
    body |= {"seed": 7, "stop": "\n", "stream": True, "echo": True, "logprobs": 3}
    request = Completion.parse(body, lm, LIMITS)
    assert request.prompts == ["ab", "c"] and request.n == 2 and request.max_tokens == 0
    assert request.sampling == Sampling(temperature=0.5, top_k=2, top_p=0.9)
    assert (request.seed, request.stops, request.stream, request.echo, request.logprobs) == (7, ("\n",), True, True, 3)


def test_temperature_zero_is_greedy(lm: charrnn.LanguageModel) -> None:
    assert Completion.parse({"temperature": 0}, lm, LIMITS).sampling.greedy


REFUSED = {
    "prompt of a number": ({"prompt": 5}, "prompt", "invalid_type"),
    "prompt list holding a number": ({"prompt": ["a", 1]}, "prompt", "invalid_type"),
    "unknown character": ({"prompt": "z"}, "prompt", "unknown_chars"),
    "stop the model cannot make": ({"stop": "z"}, "stop", "unknown_chars"),
    "empty stop": ({"stop": ""}, "stop", "invalid_value"),
    "five stops": ({"stop": ["a", "b", "c", "a", "b"]}, "stop", "invalid_value"),
    "n over the limit": ({"n": 5}, "n", "invalid_value"),
    "n of 0": ({"n": 0}, "n", "invalid_value"),
    "n as a bool": ({"n": True}, "n", "invalid_type"),
    "max_tokens over the limit": ({"max_tokens": 101}, "max_tokens", "invalid_value"),
    "max_tokens as a float": ({"max_tokens": 5.0}, "max_tokens", "invalid_type"),
    "temperature over 100": ({"temperature": 101}, "temperature", "invalid_value"),
    "top_p of 0": ({"top_p": 0}, "top_p", "invalid_value"),
    "negative top_k": ({"top_k": -1}, "top_k", "invalid_value"),
    "negative seed": ({"seed": -1}, "seed", "invalid_value"),
    "stream as a string": ({"stream": "yes"}, "stream", "invalid_type"),
    "logprobs over 20": ({"logprobs": 21}, "logprobs", "invalid_value"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_bad_field_is_a_400_naming_it(lm: charrnn.LanguageModel, case: str) -> None:
    body, param, code = REFUSED[case]
    with pytest.raises(ApiError) as refused:
        Completion.parse(body, lm, LIMITS)
    error = refused.value.body()["error"]
    assert refused.value.status == 400 and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and error["message"]


def test_error_types_follow_the_status() -> None:
    assert ApiError(401, "key").body()["error"]["type"] == "authentication_error"
    assert ApiError(404, "model", "model").body()["error"]["type"] == "not_found_error"
    assert ApiError(413, "body").body()["error"]["type"] == "invalid_request_error"


def test_logprobs_json_lines_up_tokens_offsets_and_alternatives_in_pieces() -> None:
    table = Logprobs(2)
    logits = np.log(np.array([[0.7, 0.1, 0.25], [0.2, 0.6, 0.7], [0.1, 0.3, 0.05]]))  # (V, T): columns sum to 1
    table.add(logits, np.array([0, 2, 1]))
    table.add(logits[:, :1], np.array([1]))  # a single row, as a generated character adds one
    chars = ("a", "é", "c")
    pieces = list(logprobs_json(table, chars, rows_per_piece=2))
    out = json.loads("".join(pieces))
    assert len(pieces) > 4 and out["tokens"] == ["a", "c", "é", "é"] and out["text_offset"] == [0, 1, 2, 3]
    assert out["token_logprobs"] == pytest.approx(np.log([0.7, 0.3, 0.7, 0.2]).tolist())
    assert list(out["top_logprobs"][0]) == ["a", "é"] and list(out["top_logprobs"][2]) == ["é", "a"]
    assert out["top_logprobs"][1] == pytest.approx({"é": np.log(0.6), "c": np.log(0.3)})
    narrower = json.loads("".join(logprobs_json(table.with_top(1), chars)))
    assert [list(top) for top in narrower["top_logprobs"]] == [["a"], ["é"], ["é"], ["a"]]


def test_a_chunk_is_one_server_sent_event_of_a_choice() -> None:
    event = chunk({"id": "cmpl-1", "object": "text_completion", "model": "m"}, 3, "ab\n", None)
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    data = json.loads(event.removeprefix("data: "))
    assert data["id"] == "cmpl-1" and data["model"] == "m"
    assert data["choices"] == [{"text": "ab\n", "index": 3, "logprobs": None, "finish_reason": None}]
    assert json.loads(chunk({}, 0, "", "stop")[6:])["choices"][0]["finish_reason"] == "stop"
