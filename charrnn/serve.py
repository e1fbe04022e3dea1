"""`charrnn serve`: a run's model behind OpenAI's completions API (Starlette + uvicorn, the
`serve` extra), batched across clients by `charrnn.scheduler`, reloaded when training replaces
its checkpoint.

    GET  /health           {"status", "model", "checkpoint", "step", "active_streams"}
    GET  /v1/models        OpenAI's list; the model's id is the run's name
    POST /v1/completions   OpenAI's (legacy) completions, a token being a character
    POST /v1/score         charrnn's: {"input": str | [str]} -> nats per character per record

Errors are OpenAI's object {"error": {"message", "type", "param", "code"}} with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn import checkpoint
from charrnn.api import LanguageModel, load
from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.extras import require
from charrnn.rundir import find_model
from charrnn.sample import Sampling, seed_key
from charrnn.scheduler import Job, Scheduler

log = logging.getLogger("charrnn.serve")


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


class ModelHolder:
    """The run's current model: reloaded when the checkpoint that the model rule picks changes
    (a `train` renames a new one into place); a new checkpoint that fails to load keeps the old
    model, with one log line."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.lm = load(run)
        self._seen = self._signature()
        self._lock = threading.Lock()

    def _signature(self) -> tuple:
        path = find_model(self.run)
        st = path.stat()
        return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> LanguageModel:
        with self._lock:
            try:
                seen = self._signature()
            except (OSError, CharRNNError):
                return self.lm  # the checkpoint is being replaced, or gone: keep serving
            if seen != self._seen:
                self._seen = seen
                try:
                    path = Path(seen[0])
                    self.lm = LanguageModel(checkpoint.load(path), path)
                    log.warning("charrnn: serving %s (step %d)", path, self.lm.step)
                except CharRNNError as err:
                    log.warning("charrnn: keeping the model of step %d: %s", self.lm.step, err)
            return self.lm


def _field(body: dict, name: str, kind: type | tuple, default: Any, check: Any = None, rule: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name} must be {rule or getattr(kind, '__name__', kind)}", name, "invalid_type")
    if check is not None and not check(value):
        raise ApiError(400, f"{name} must be {rule}, got {value!r:.60}", name, "invalid_value")
    return value


def _strings(body: dict, name: str, required: bool, most: int | None = None) -> list[str]:
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
        prompts = _strings(body, "prompt", required=False) or [""]
        number = (int, float)
        temperature = _field(body, "temperature", number, 1.0, lambda t: 0 <= t <= 100, "a number in [0, 100]")
        top_p = _field(body, "top_p", number, 1.0, lambda p: 0 < p <= 1, "a number in (0, 1]")
        top_k = _field(body, "top_k", int, 0, lambda k: k >= 0, "an integer >= 0")
        sampling = Sampling(temperature or 1.0, top_k, top_p, greedy=temperature == 0)
        stops = tuple(_strings(body, "stop", required=False, most=4))
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


class Server:
    """The app's state: the model holder, the scheduler, the limits and the key."""

    def __init__(self, run: str, limits: Limits, api_key: str | None) -> None:
        self.holder, self.limits, self.api_key = ModelHolder(run), limits, api_key
        self.model_id = Path(run).resolve().name if Path(run).is_dir() else Path(run).stem
        self.scheduler = Scheduler()

    def jobs(self, request: Completion, lm: LanguageModel, loop: asyncio.AbstractEventLoop) -> tuple[list, Any]:
        """One job per choice (prompt p, choice j: index and stream p * n + j), all reporting to
        one asyncio queue as (index, event)."""
        events: asyncio.Queue = asyncio.Queue()
        key = seed_key(request.seed)
        jobs = []
        for p, prompt in enumerate(request.prompts):
            for j in range(request.n):
                index = p * request.n + j

                def emit(event: tuple, index: int = index) -> None:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))

                job = Job(lm, prompt, request.max_tokens, request.sampling, key, index, emit, request.stops)
                job.logprobs, job.streaming = request.logprobs, request.stream
                jobs.append(job)
        return jobs, events


def build_app(server: Server) -> Any:
    """The Starlette application over `server`."""
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def read(request: Request) -> dict:
        if server.api_key is not None and request.headers.get("authorization") != f"Bearer {server.api_key}":
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", None, "invalid_api_key")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > server.limits.max_body:
                raise ApiError(413, f"the body is larger than {server.limits.max_body} bytes", None, "too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if model is not None and model != server.model_id:
            raise ApiError(
                404, f"no model {model!r:.60}; this server has {server.model_id!r}", "model", "model_not_found"
            )
        return body

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Any:
            try:
                return await handler(request)
            except ApiError as err:
                return JSONResponse(err.body(), status_code=err.status)

        return endpoint

    async def health(request: Request) -> Any:
        lm = server.holder.current()
        s = lm.shape
        return JSONResponse(
            {
                "status": "ok",
                "model": f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}",
                "id": server.model_id,
                "checkpoint": str(lm.path),
                "step": lm.step,
                "active_streams": server.scheduler.active,
            }
        )

    async def models(request: Request) -> Any:
        lm = server.holder.current()
        entry = {
            "id": server.model_id,
            "object": "model",
            "created": int(lm.path.stat().st_mtime),
            "owned_by": "charrnn",
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def completions(request: Request) -> Any:
        body = await read(request)
        lm = server.holder.current()
        completion = Completion.parse(body, lm, server.limits)
        jobs, events = server.jobs(completion, lm, asyncio.get_running_loop())
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        meta["model"] = server.model_id
        server.scheduler.submit(jobs)
        if completion.stream:
            return StreamingResponse(_stream(request, completion, jobs, events, meta), media_type="text/event-stream")
        reasons: list[str | None] = [None] * len(jobs)
        while any(reason is None for reason in reasons):
            index, (_, reason) = await events.get()  # only ("done", reason) when not streaming
            reasons[index] = "stop" if reason == "error" else reason
        choices = []
        for index, job in enumerate(jobs):
            text = (job.prime if completion.echo else "") + job.text
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reasons[index]}
            if completion.logprobs is not None:
                choice["logprobs"] = _logprobs_object(job.infos, len(job.prime) if completion.echo else 0)
            choices.append(choice)
        generated = sum(len(job.text) for job in jobs)
        prompt_chars = sum(len(prompt) for prompt in completion.prompts)
        usage = {
            "prompt_tokens": prompt_chars,
            "completion_tokens": generated,
            "total_tokens": prompt_chars + generated,
        }
        return JSONResponse({**meta, "choices": choices, "usage": usage})

    async def score(request: Request) -> Any:
        body = await read(request)
        records = _strings(body, "input", required=True)
        lm = server.holder.current()
        scores = await run_in_threadpool(_score, lm, records)
        data = [{"object": "score", "index": i, **s} for i, s in enumerate(scores)]
        return JSONResponse({"object": "list", "model": server.model_id, "data": data})

    routes = [
        Route("/health", guarded(health)),
        Route("/v1/models", guarded(models)),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
        Route("/v1/score", guarded(score), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        server.scheduler.start()
        yield
        server.scheduler.stop()  # after uvicorn has finished the requests in flight

    return Starlette(routes=routes, lifespan=lifespan)


def _score(lm: LanguageModel, records: list[str]) -> list[dict[str, Any]]:
    """`charrnn score --json` of each record (without the text), on a twin of the model: the
    scheduler's thread owns the model's own buffers."""
    fields = ("loss", "bpc", "chars", "unknown")
    return [{k: v for k, v in json.loads(s.to_json()).items() if k in fields} for s in lm.twin().iter_scores(records)]


def _logprobs_object(infos: list[dict], offset: int) -> dict[str, Any]:
    tokens = [info["token"] for info in infos]
    offsets = [offset + sum(map(len, tokens[:i])) for i in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [info["logprob"] for info in infos],
        "top_logprobs": [info["top"] for info in infos],
        "text_offset": offsets,
    }


async def _stream(request: Any, completion: Completion, jobs: list[Job], events: asyncio.Queue, meta: dict) -> Any:
    """Server-sent events: the text drawn since the last event, per choice, as it comes; one
    event with each choice's finish_reason; then `data: [DONE]`. A client that goes away
    (checked between events) cancels its streams."""
    done = 0
    try:
        if completion.echo:
            for index, job in enumerate(jobs):
                yield _event(meta, index, job.prime, None)
        while done < len(jobs):
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            if await request.is_disconnected():
                return
            texts: dict[int, str] = {}
            for index, event in batch:
                if event[0] == "text":
                    texts[index] = texts.get(index, "") + event[1]
                    continue
                if texts.get(index):
                    yield _event(meta, index, texts.pop(index), None)
                done += 1
                yield _event(meta, index, "", "stop" if event[1] == "error" else event[1])
            for index, text in texts.items():
                if text:
                    yield _event(meta, index, text, None)
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancelled.set()


def _event(meta: dict, index: int, text: str, finish: str | None) -> str:
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
    return f"data: {json.dumps({**meta, 'choices': [choice]}, ensure_ascii=False)}\n\n"


def serve(run: str, host: str, port: int, api_key: str | None, limits: Limits) -> None:
    """Serve until SIGTERM or SIGINT: then stop taking requests, finish those in flight, exit."""
    uvicorn = require("uvicorn", "serve")
    server = Server(run, limits, api_key)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn takes them
    except OSError as err:
        sock.close()
        raise CharRNNError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    lm = server.holder.lm
    address = f"http://{host}:{sock.getsockname()[1]}"
    print(f"charrnn: serving {server.model_id} ({lm.path}, step {lm.step}) on {address}", file=sys.stderr, flush=True)
    config = uvicorn.Config(build_app(server), log_level="warning", timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])


def api_key_from(option: str | None) -> str | None:
    key = option or os.environ.get("CHARRNN_API_KEY") or None
    if key is not None and not key.strip():
        raise InvalidUsageError("the API key is empty")
    return key
