"""OpenAI's completions protocol as `charrnn serve` speaks it: a request checked into a
`Completion`, the shapes of errors, of logprobs and of a streamed chunk. A token is a character.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from charrnn.api import LanguageModel
from charrnn.sample import Sampling
from charrnn.scheduler import Logprobs


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and what the server takes at once (`charrnn serve` options)."""

    max_tokens: int = 4096  # characters per choice
    max_n: int = 64  # choices per prompt
    max_choices: int = 128  # choices per request: prompts x n
    max_body: int = 1 << 20  # bytes
    body_timeout: float = 10.0  # seconds for a body to arrive
    max_streams: int = 1024  # choices in flight in the whole server; past that a 429


class ApiError(Exception):
    """A request the API refuses: OpenAI's error object with this status (and headers, such as
    a 429's Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(self.status)
        kind = kind or ("server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


def parse_json(raw: bytes) -> dict:
    """A request body as a JSON object; anything else (not JSON, not UTF-8, nested too deep for
    Python, a number of more digits than Python reads) is a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(
            400, "the body is not valid JSON (or nests or counts beyond what is read)", None, "invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
    return body


def _field(body: dict, name: str, kind: type | tuple, default: Any, check: Any = None, rule: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name} must be {rule or getattr(kind, '__name__', kind)}", name, "invalid_type")
    if check is not None and not check(value):
        raise ApiError(400, f"{name} must be {rule}, got {value!r:.60}", name, "invalid_value")
    return value


def strings(body: dict, name: str, required: bool, most: int | None = None) -> list[str]:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", name, "missing")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ApiError(400, f"{name} must be a string or a list of strings", name, "invalid_type")
    if most is not None and len(items) > most:
        raise ApiError(400, f"{name} holds at most {most} strings", name, "invalid_value")
    return items


@dataclass
class Completion:
    """A validated completions request."""

    prompts: list[str]
    n: int
    max_tokens: int
    sampling: Sampling
    seed: int | None
    stops: tuple[str, ...]
    stream: bool
    echo: bool
    logprobs: int | None

    @classmethod
    def parse(cls, body: dict, lm: LanguageModel, limits: Limits) -> Completion:
        prompts = strings(body, "prompt", required=False) or [""]
        number = (int, float)
        temperature = _field(body, "temperature", number, 1.0, lambda t: 0 <= t <= 100, "a number in [0, 100]")
        top_p = _field(body, "top_p", number, 1.0, lambda p: 0 < p <= 1, "a number in (0, 1]")
        top_k = _field(body, "top_k", int, 0, lambda k: k >= 0, "an integer >= 0")
        sampling = Sampling(temperature or 1.0, top_k, top_p, greedy=temperature == 0)
        stops = tuple(strings(body, "stop", required=False, most=4))
        for i, text in enumerate([*prompts, *stops]):
            unknown = sorted(set(text) - set(lm.vocab.chars))
            param = "prompt" if i < len(prompts) else "stop"
            if unknown:
                raise ApiError(
                    400, f"{param} has characters the model never saw: {unknown[:20]}", param, "unknown_chars"
                )
        if any(not stop for stop in stops):
            raise ApiError(400, "stop strings must not be empty", "stop", "invalid_value")
        n = _field(body, "n", int, 1, lambda n: 1 <= n <= limits.max_n, f"an integer in [1, {limits.max_n}]")
        if len(prompts) * n > limits.max_choices:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n {n} asks for {len(prompts) * n} choices; at most {limits.max_choices}",
                "n" if len(prompts) == 1 else "prompt",
                "too_many_choices",
            )
        return cls(
            prompts,
            n,
            _field(body, "max_tokens", int, 16, lambda m: 0 <= m <= limits.max_tokens, f"in [0, {limits.max_tokens}]"),
            sampling,
            _field(body, "seed", int, None, lambda s: s >= 0, "an integer >= 0"),
            stops,
            _field(body, "stream", bool, False),
            _field(body, "echo", bool, False),
            _field(body, "logprobs", int, None, lambda k: 0 <= k <= 20, "an integer in [0, 20]"),
        )


def logprobs_json(table: Logprobs, chars: tuple[str, ...], rows_per_piece: int = 256) -> Iterator[str]:
    """OpenAI's `logprobs` of a choice from its table (the echoed prompt's rows first) as JSON
    text, in pieces of a few hundred rows: a long echo's reply is encoded in many short calls,
    never one that holds the interpreter for a second."""
    rows = table.rows(chars)
    tokens: list[str] = []
    token_logprobs: list[float] = []
    yield '{"top_logprobs": ['
    first = True
    while piece := list(itertools.islice(rows, rows_per_piece)):
        tokens += [row["token"] for row in piece]
        token_logprobs += [row["logprob"] for row in piece]
        text = json.dumps([row["top"] for row in piece], ensure_ascii=False)[1:-1]
        yield text if first else ", " + text
        first = False
    yield '], "tokens": ' + json.dumps(tokens, ensure_ascii=False)
    yield ', "token_logprobs": ' + json.dumps(token_logprobs)
    yield ', "text_offset": ' + json.dumps(list(range(len(tokens)))) + "}"


def chunk(meta: dict, index: int, text: str, finish: str | None, rows: list | None = None, offset: int = 0) -> str:
    """One server-sent event of a streamed completion; with `rows` (a `Logprobs` table's rows
    for the characters of `text`), their logprobs, offsets counted from `offset`."""
    logprobs = None
    if rows is not None:
        logprobs = {
            "tokens": [row["token"] for row in rows],
            "token_logprobs": [row["logprob"] for row in rows],
            "top_logprobs": [row["top"] for row in rows],
            "text_offset": list(range(offset, offset + len(rows))),
        }
    choice = {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
    return f"data: {json.dumps({**meta, 'choices': [choice]}, ensure_ascii=False)}\n\n"
