"""OpenAI's completions protocol as `charrnn serve` speaks it: a request checked into a
`Completion`, the shapes of errors, of logprobs and of a streamed chunk. A token is a character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from charrnn.api import LanguageModel
from charrnn.sample import Sampling


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`charrnn serve` options)."""

    max_tokens: int = 4096
    max_n: int = 64
    max_body: int = 1 << 20  # bytes


class ApiError(Exception):
    """A request the API refuses: OpenAI's error object with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


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
        return cls(
            prompts,
            _field(body, "n", int, 1, lambda n: 1 <= n <= limits.max_n, f"an integer in [1, {limits.max_n}]"),
            _field(body, "max_tokens", int, 16, lambda m: 0 <= m <= limits.max_tokens, f"in [0, {limits.max_tokens}]"),
            sampling,
            _field(body, "seed", int, None, lambda s: s >= 0, "an integer >= 0"),
            stops,
            _field(body, "stream", bool, False),
            _field(body, "echo", bool, False),
            _field(body, "logprobs", int, None, lambda k: 0 <= k <= 20, "an integer in [0, 20]"),
        )


def logprobs_object(infos: list[dict]) -> dict[str, Any]:
    """OpenAI's `logprobs` of a choice from the scheduler's per-character infos (the prompt's
    first, with `echo`)."""
    tokens = [info["token"] for info in infos]
    return {
        "tokens": tokens,
        "token_logprobs": [info["logprob"] for info in infos],
        "top_logprobs": [info["top"] for info in infos],
        "text_offset": [sum(map(len, tokens[:i])) for i in range(len(tokens))],
    }


def chunk(meta: dict, index: int, text: str, finish: str | None) -> str:
    """One server-sent event of a streamed completion."""
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
    return f"data: {json.dumps({**meta, 'choices': [choice]}, ensure_ascii=False)}\n\n"
