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
from pathlib import Path
from typing import Any

from charrnn import checkpoint
from charrnn.api import LanguageModel, load
from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.extras import require
from charrnn.openai_api import ApiError, Completion, Limits, chunk, logprobs_object, strings
from charrnn.rundir import find_model
from charrnn.sample import seed_key
from charrnn.scheduler import Job, Scheduler

log = logging.getLogger("charrnn.serve")


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
                job.logprobs, job.echo, job.streaming = request.logprobs, request.echo, request.stream
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
        async for part in request.stream():
            raw += part
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
                choice["logprobs"] = logprobs_object(job.infos)
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
        records = strings(body, "input", required=True)
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


async def _stream(request: Any, completion: Completion, jobs: list[Job], events: asyncio.Queue, meta: dict) -> Any:
    """Server-sent events: the text drawn since the last event, per choice, as it comes; one
    event with each choice's finish_reason; then `data: [DONE]`. A client that goes away
    (checked between events) cancels its streams."""
    done = 0
    try:
        if completion.echo:
            for index, job in enumerate(jobs):
                yield chunk(meta, index, job.prime, None)
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
                    yield chunk(meta, index, texts.pop(index), None)
                done += 1
                yield chunk(meta, index, "", "stop" if event[1] == "error" else event[1])
            for index, text in texts.items():
                if text:
                    yield chunk(meta, index, text, None)
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancelled.set()


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
