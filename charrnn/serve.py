"""`charrnn serve`: a run's model behind OpenAI's completions API (Starlette + uvicorn, the
`serve` extra), batched across clients by `charrnn.scheduler`, loaded in the background and
reloaded when training replaces its checkpoint.

    GET  /                 a page to try the model: the text streamed in, coloured by surprise
    GET  /health           200 {"status": "ok", ...} once a model is loaded (503 "loading" before)
    GET  /metrics          Prometheus' text format (`charrnn.telemetry`)
    GET  /v1/models        OpenAI's list; the model's id is the run's name
    POST /v1/completions   OpenAI's (legacy) completions, a token being a character
    POST /v1/score         charrnn's: {"input": str | [str]} -> nats per character per record

With an API key, every endpoint but `GET /` and `GET /health` needs it; `/health` without it
says only whether the server is up, and the page asks for the key. Errors are OpenAI's object
{"error": {"message", "type", "param", "code"}}: 4xx for the request, 429 (with Retry-After)
when the server is full, 503 while no model can be read, 500 with one log line for a fault of
the server's. The event loop only
moves bytes: parsing, replies and scoring run in worker threads and generation in the
scheduler's, so no request makes another wait. Slow clients are cut off by
`charrnn.connections`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import resource
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from charrnn import checkpoint
from charrnn.api import LanguageModel
from charrnn.connections import ConnectionLimits, guarded_protocol
from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.extras import require
from charrnn.openai_api import ApiError, Completion, Limits, chunk, logprobs_json, parse_json, strings
from charrnn.rundir import find_model
from charrnn.sample import seed_key
from charrnn.scheduler import Job, Scheduler
from charrnn.telemetry import Telemetry

log = logging.getLogger("charrnn.serve")


class ModelHolder:
    """The run's current model, loaded in a thread of its own: at start (until then there is
    none) and whenever the checkpoint that the model rule picks changes (a `train` renames a
    new one into place), while the old model goes on serving; the new one is swapped in when
    ready. A checkpoint that fails to load keeps the old model, with one log line."""

    def __init__(self, run: str, on_loaded: Callable[[LanguageModel], None] = lambda lm: None) -> None:
        self.run, self.on_loaded = run, on_loaded
        self.lm: LanguageModel | None = None
        self.loaded_at = 0.0
        self.failure: str | None = None  # why no model could be read, while there is none
        self._seen: tuple | None = None
        self._loading = False
        self._lock = threading.Lock()
        self.refresh()

    def _signature(self) -> tuple:
        path = find_model(self.run)
        st = path.stat()
        return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Start loading the checkpoint the model rule picks, if it is new and no load is running."""
        try:
            seen = self._signature()
        except (OSError, CharRNNError) as err:  # being replaced, or gone: keep what is loaded
            if self.lm is None and not self._loading:
                self.failure = str(err)
            return
        with self._lock:
            if seen == self._seen or self._loading:
                return
            self._seen, self._loading = seen, True
        threading.Thread(target=self._load, args=(Path(seen[0]),), name="charrnn-loader", daemon=True).start()

    def _load(self, path: Path) -> None:
        try:
            lm = LanguageModel(checkpoint.load(path), path)
        except CharRNNError as err:
            if self.lm is None:
                self.failure = str(err)
                log.warning("charrnn: cannot load %s: %s", path, err)
            else:
                log.warning("charrnn: keeping the model of step %d: %s", self.lm.step, err)
        else:
            self.lm, self.loaded_at, self.failure = lm, time.time(), None
            log.warning("charrnn: serving %s (step %d)", path, lm.step)
            self.on_loaded(lm)
        finally:
            self._loading = False

    def current(self) -> LanguageModel:
        """The model to serve now; a 503 while there is none."""
        self.refresh()
        lm = self.lm
        if lm is None:
            if self.failure is not None and not self._loading:
                raise ApiError(503, f"no model can be read: {self.failure}", None, "model_unavailable")
            raise ApiError(503, "the model is loading; try again shortly", None, "model_loading", {"Retry-After": "1"})
        return lm


class Server:
    """The app's state: the model holder, the scheduler, the limits, the key and the metrics."""

    def __init__(self, run: str, limits: Limits, api_key: str | None) -> None:
        self.limits, self.api_key = limits, api_key
        self.model_id = Path(run).resolve().name if Path(run).is_dir() else Path(run).stem
        self.scheduler = Scheduler(limits.max_streams)
        self.telemetry = Telemetry(lambda: self.scheduler.active, lambda: self.scheduler.waiting)
        self.holder = ModelHolder(run, lambda lm: self.telemetry.model_loaded(lm.step, time.time()))

    def authorised(self, request: Any) -> bool:
        """Whether the request holds the key (compared in constant time), or none is needed."""
        if self.api_key is None:
            return True
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, f"Bearer {self.api_key}".encode("utf-8", "surrogateescape"))

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


UNAUTHORISED = ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", None, "invalid_api_key")
INTERNAL = ApiError(500, "the server failed to answer; its log says why", None, "internal_error")


async def _read_body(request: Any, server: Server) -> dict:
    """The body as a JSON object: at most `max_body` bytes, arriving within `body_timeout`,
    parsed in a worker thread, naming this server's model if any."""
    from starlette.concurrency import run_in_threadpool

    limits = server.limits
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body:
        raise ApiError(413, f"the body is larger than {limits.max_body} bytes", None, "too_large")
    raw = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for part in request.stream():
                raw += part
                if len(raw) > limits.max_body:
                    raise ApiError(413, f"the body is larger than {limits.max_body} bytes", None, "too_large")
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {limits.body_timeout:g} s", None, "timeout") from None
    body = await run_in_threadpool(parse_json, bytes(raw))
    model = body.get("model")
    if model is not None and model != server.model_id:
        raise ApiError(404, f"no model {model!r:.60}; this server has {server.model_id!r}", "model", "model_not_found")
    return body


def _endpoint(server: Server, name: str, handler: Callable, keyed: bool) -> Callable:
    """The route of `handler`: the key checked (when `keyed`), every failure an OpenAI error
    object (a fault of the server's: a 500 and one log line), the answer counted."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response

    async def answer(request: Any) -> Any:
        started = time.perf_counter()
        try:
            if keyed and not server.authorised(request):
                raise UNAUTHORISED
            response = await handler(request)
        except ApiError as err:
            response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except ClientDisconnect:
            response = Response(status_code=499)  # the client left while sending: nobody to answer
        except Exception as err:
            log.error("charrnn: %s failed: %s: %s", name, type(err).__name__, err)
            response = JSONResponse(INTERNAL.body(), status_code=500)
        server.telemetry.answered(name, response.status_code, time.perf_counter() - started)
        return response

    return answer


def build_app(server: Server) -> Any:
    """The Starlette application over `server`."""
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    limits = server.limits

    async def health(request: Request) -> Any:
        server.holder.refresh()
        lm = server.holder.lm
        if lm is None:
            status = "unavailable" if server.holder.failure is not None else "loading"
            return JSONResponse({"status": status}, status_code=503)
        if not server.authorised(request):
            return JSONResponse({"status": "ok"})
        s = lm.shape
        return JSONResponse(
            {
                "status": "ok",
                "model": f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}",
                "id": server.model_id,
                "checkpoint": str(lm.path),
                "step": lm.step,
                "active_streams": server.scheduler.active,
                "waiting_streams": server.scheduler.waiting,
            }
        )

    async def metrics(request: Request) -> Any:
        body, content_type = server.telemetry.exposition()
        return Response(body, media_type=content_type)

    async def models(request: Request) -> Any:
        server.holder.current()
        entry = {"id": server.model_id, "object": "model", "created": int(server.holder.loaded_at)}
        return JSONResponse({"object": "list", "data": [{**entry, "owned_by": "charrnn"}]})

    async def completions(request: Request) -> Any:
        body = await _read_body(request, server)
        lm = server.holder.current()
        completion = await run_in_threadpool(Completion.parse, body, lm, limits)
        jobs, events = server.jobs(completion, lm, asyncio.get_running_loop())
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        meta["model"] = server.model_id
        if not server.scheduler.submit(jobs):
            raise ApiError(
                429,
                f"the server has {limits.max_streams} streams in flight; try again shortly",
                None,
                "too_many_streams",
                {"Retry-After": "1"},
            )
        if completion.stream:
            chunks = _stream(request, completion, jobs, events, meta, server.telemetry)
            return StreamingResponse(chunks, media_type="text/event-stream")
        reasons = await _finished(request, jobs, events)
        if reasons is None:
            return Response(status_code=499)  # the client left: its streams were cancelled
        server.telemetry.generated.inc(sum(len(job.text) for job in jobs))
        if "error" in reasons:
            raise INTERNAL
        return StreamingResponse(_reply(meta, completion, jobs, reasons), media_type="application/json")

    async def score(request: Request) -> Any:
        body = await _read_body(request, server)
        records = strings(body, "input", required=True)
        lm = server.holder.current()
        scores = await run_in_threadpool(_score, lm, records)
        data = [{"object": "score", "index": i, **s} for i, s in enumerate(scores)]
        return JSONResponse({"object": "list", "model": server.model_id, "data": data})

    page_html, page_headers = _page()

    async def page(request: Request) -> Any:
        return HTMLResponse(page_html, headers=page_headers)

    routes = [
        Route("/", _endpoint(server, "page", page, keyed=False)),
        Route("/health", _endpoint(server, "health", health, keyed=False)),
        Route("/metrics", _endpoint(server, "metrics", metrics, keyed=True)),
        Route("/v1/models", _endpoint(server, "models", models, keyed=True)),
        Route("/v1/completions", _endpoint(server, "completions", completions, keyed=True), methods=["POST"]),
        Route("/v1/score", _endpoint(server, "score", score, keyed=True), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        server.scheduler.start()
        yield
        server.scheduler.stop()  # after uvicorn has finished the requests in flight

    return Starlette(routes=routes, lifespan=lifespan)


def _page() -> tuple[str, dict[str, str]]:
    """The page of `GET /` (`serve_page.html`, package data: no external assets) and its
    headers: a content security policy that runs its own script alone and connects only here."""
    html = resources.files("charrnn").joinpath("serve_page.html").read_text(encoding="utf-8")
    script = html[html.index("<script>") + len("<script>") : html.index("</script>")]
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _reply(meta: dict, completion: Completion, jobs: list[Job], reasons: list[str]) -> Iterator[bytes]:
    """The JSON body of a finished completion, in pieces (Starlette draws each in a worker
    thread): a reply that grows with the request never holds the event loop or the interpreter."""
    generated = sum(len(job.text) for job in jobs)
    prompt_chars = sum(len(prompt) for prompt in completion.prompts)
    usage = {"prompt_tokens": prompt_chars, "completion_tokens": generated, "total_tokens": prompt_chars + generated}
    head = json.dumps({**meta, "usage": usage}, ensure_ascii=False)
    yield (head[:-1] + ', "choices": [').encode()
    for index, job in enumerate(jobs):
        text = (job.prime if completion.echo else "") + job.text
        choice = json.dumps({"text": text, "index": index, "finish_reason": reasons[index]}, ensure_ascii=False)
        yield ((", " if index else "") + choice[:-1] + ', "logprobs": ').encode()
        if job.table is None:
            yield b"null}"
            continue
        yield from (piece.encode() for piece in logprobs_json(job.table, job.lm.vocab.chars))
        yield b"}"
    yield b"]}"


async def _client_left(request: Any) -> None:
    """Returns when the client has closed the connection (its body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _finished(request: Any, jobs: list[Job], events: asyncio.Queue) -> list[str] | None:
    """Each job's finish reason, in order; None, with every job cancelled, if the client leaves first."""
    reasons: list[str | None] = [None] * len(jobs)
    left = asyncio.ensure_future(_client_left(request))
    try:
        while None in reasons:
            event = asyncio.ensure_future(events.get())
            await asyncio.wait({event, left}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                event.cancel()
                for job in jobs:
                    job.cancelled.set()
                return None
            index, (_, reason) = event.result()  # only ("done", reason) when not streaming
            reasons[index] = reason
        return reasons  # type: ignore[return-value]
    finally:
        left.cancel()


def _score(lm: LanguageModel, records: list[str]) -> list[dict[str, Any]]:
    """`charrnn score --json` of each record (without the text), on a twin of the model: the
    scheduler's thread owns the model's own buffers."""
    fields = ("loss", "bpc", "chars", "unknown")
    return [{k: v for k, v in json.loads(s.to_json()).items() if k in fields} for s in lm.twin().iter_scores(records)]


async def _stream(
    request: Any, completion: Completion, jobs: list[Job], events: asyncio.Queue, meta: dict, telemetry: Telemetry
) -> Any:
    """Server-sent events: the text drawn since the last event, per choice, as it comes; one
    event with each choice's finish_reason; then `data: [DONE]`. A choice that failed ends the
    stream with OpenAI's error object as an event (which OpenAI's clients raise). A client that
    goes away (checked between events) cancels its streams."""
    done, sent = 0, [0] * len(jobs)  # sent: characters streamed per choice (logprobs' text_offset)

    def text_chunk(index: int, text: str, rows: list | None) -> str:
        sent[index] += len(text)
        return chunk(meta, index, text, None, rows, sent[index] - len(text))

    try:
        if completion.echo:
            for index, job in enumerate(jobs):
                yield text_chunk(index, job.prime, None)
        while done < len(jobs):
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            if await request.is_disconnected():
                return
            texts: dict[int, tuple[str, list | None]] = {}
            for index, event in batch:
                if event[0] == "text":
                    text, rows = texts.get(index, ("", None if event[2] is None else []))
                    texts[index] = (text + event[1], None if rows is None else rows + event[2])
                    telemetry.generated.inc(len(event[1]))
                    continue
                if index in texts:
                    yield text_chunk(index, *texts.pop(index))
                if event[1] == "error":
                    yield f"data: {json.dumps(INTERNAL.body())}\n\n"
                    return
                done += 1
                yield chunk(meta, index, "", event[1])
            for index, (text, rows) in texts.items():
                yield text_chunk(index, text, rows)
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancelled.set()


def _raise_file_limit(wanted: int) -> None:
    """Let the process open `wanted` files (sockets) if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )


def serve(run: str, host: str, port: int, api_key: str | None, limits: Limits, connections: ConnectionLimits) -> None:
    """Serve until SIGTERM or SIGINT: then stop taking requests, finish those in flight, exit."""
    uvicorn = require("uvicorn", "serve")
    require("prometheus_client", "serve")
    find_model(run)  # a run without a checkpoint is a usage error before anything listens
    _raise_file_limit(connections.max_connections + 256)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn takes them
    except OSError as err:
        sock.close()
        raise CharRNNError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    address = f"http://{host}:{sock.getsockname()[1]}"
    print(f"charrnn: serving {run} on {address}", file=sys.stderr, flush=True)
    server = Server(run, limits, api_key)  # the model loads from here on, in the background
    config = uvicorn.Config(
        build_app(server),
        log_level="warning",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=5,
        http=guarded_protocol(connections),
    )
    uvicorn.Server(config).run(sockets=[sock])


def api_key_from(option: str | None) -> str | None:
    key = option or os.environ.get("CHARRNN_API_KEY") or None
    if key is not None and not key.strip():
        raise InvalidUsageError("the API key is empty")
    return key
