"""Continuous batching for a server: the streams of every request in flight advance together,
one batched forward call per character, in one thread that owns the model's arithmetic.

A request's choices are `Job`s. A job joins at the next step (its prime is fed first, alone,
as `charrnn.sample.starts` feeds it), leaves when it has its characters, generates a stop text
or is cancelled (a client that went away), and its characters go to its `emit` callback as
they are drawn. Each stream draws from charrnn's counter-based generator with its own key and
stream index (`charrnn.sample.uniforms`), so a job's text equals `charrnn sample`'s for the
same seed, stream index, prime and options, whatever else runs beside it. Streams are grouped
by model: after a reload, jobs in flight finish on the model they started on.

This is one of two decoding loops; the other, `charrnn.sample.generate_ids`, runs a fixed set of
streams for `sample` and the Python API (tests/test_scheduler.py checks that they agree).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charrnn.api import LanguageModel
from charrnn.sample import Sampling, next_ids, starts, uniforms

MAX_STREAMS = 1024  # streams stepped together; more wait for a place


@dataclass
class Job:
    """One choice of a completion request. Its final text gathers in `text` (and `infos`, with
    `logprobs`: the top N per character); `emit` receives ("text", str) as characters become
    final when `streaming`, and ("done", finish_reason) at the end, from the scheduler's thread.
    `stops` never reach the text (OpenAI's convention)."""

    lm: LanguageModel
    prime: str
    length: int
    sampling: Sampling
    key: int
    stream: int
    emit: Callable[[tuple], None]
    stops: tuple[str, ...] = ()
    logprobs: int | None = None
    echo: bool = False  # with logprobs: the prompt's characters get theirs too, in `infos`
    streaming: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    infos: list[dict[str, Any]] = field(default_factory=list)
    pending: str = ""  # drawn characters held back while they may begin a stop text
    made: int = 0

    def add(self, text: str) -> None:
        self.text += text
        if self.streaming and text:
            self.emit(("text", text))

    def end(self, reason: str) -> None:
        self.emit(("done", reason))


class _Group:
    """The streams of one model in flight: state (L, S, N, H) and the logits they draw from (V, N)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.jobs: list[Job] = []
        self.state = lm.model.initial_state(0)
        self.logits = np.zeros((lm.shape.vocab_size, 0), np.float32)

    def admit(self, job: Job) -> None:
        """Feed the job's start id and prime; its stream then draws with the others."""
        model = self.lm.model
        (context,), state0 = starts(model, self.lm.vocab, [job.prime])
        logits, state = model.logits(context[:, None], state0)
        if job.echo and job.logprobs is not None and len(context) == len(job.prime) + 1:
            chars = self.lm.vocab.chars
            job.infos += [
                _logprobs(logits[:, k, 0], int(context[k + 1]), job.logprobs, chars) for k in range(len(job.prime))
            ]
        self.jobs.append(job)
        self.state = np.concatenate([self.state, state], axis=2)
        self.logits = np.concatenate([self.logits, logits[:, -1]], axis=1)

    def step(self) -> None:
        """Draw one character for every stream, hand it out, drop finished streams, feed the rest."""
        keys = np.array([job.key for job in self.jobs], np.uint64)
        u = uniforms(keys, np.array([job.stream for job in self.jobs]), np.array([job.made for job in self.jobs]))
        ids = np.empty(len(self.jobs), np.int64)
        for sampling in {job.sampling for job in self.jobs}:
            rows = [i for i, job in enumerate(self.jobs) if job.sampling == sampling]
            ids[rows] = next_ids(self.logits[:, rows].T, u[rows], sampling)
        keep = [i for i, job in enumerate(self.jobs) if not self._hand_out(job, int(ids[i]), self.logits[:, i])]
        self.jobs = [self.jobs[i] for i in keep]
        if self.jobs:
            logits, self.state = self.lm.model.logits(ids[keep][None, :], self.state[:, :, keep], reuse_weights=True)
            self.logits = logits[:, 0]

    def _hand_out(self, job: Job, char_id: int, logits: np.ndarray) -> bool:
        """Give the job its character; whether the job has ended."""
        if job.cancelled.is_set():
            return True
        job.made += 1
        if job.logprobs is not None:
            job.infos.append(_logprobs(logits, char_id, job.logprobs, self.lm.vocab.chars))
        job.pending += self.lm.vocab.chars[char_id]
        stop = next((s for s in job.stops if job.pending.endswith(s)), None)
        if stop is not None:
            job.add(job.pending[: len(job.pending) - len(stop)])
            job.end("stop")
            return True
        held = max((_overlap(job.pending, s) for s in job.stops), default=0)
        ready, job.pending = job.pending[: len(job.pending) - held], job.pending[len(job.pending) - held :]
        job.add(ready)
        if job.made >= job.length:
            job.add(job.pending)
            job.end("length")
            return True
        return False


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (and is shorter than it)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0


def _logprobs(logits: np.ndarray, chosen: int, top: int, chars: tuple[str, ...]) -> dict[str, Any]:
    """The model's log-probability of the chosen character and of its `top` most likely ones
    (the raw distribution: before temperature, top-k or top-p). One of the places a text's
    cross-entropy is computed (see `charrnn.evaluate.sum_xent`)."""
    scores = logits.astype(np.float64)
    log_p = scores - scores.max()
    log_p -= math.log(np.exp(log_p).sum())
    best = np.argsort(-log_p, kind="stable")[:top]
    return {"token": chars[chosen], "logprob": float(log_p[chosen]), "top": {chars[i]: float(log_p[i]) for i in best}}


class Scheduler(threading.Thread):
    """The thread that runs every job (see the module docstring). `submit` from any thread."""

    def __init__(self) -> None:
        super().__init__(name="charrnn-scheduler", daemon=True)
        self._incoming: queue.Queue[Job | None] = queue.Queue()
        self._groups: dict[int, _Group] = {}
        self.active = 0  # streams in flight (for /health)

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._incoming.put(job)

    def stop(self) -> None:
        self._incoming.put(None)

    def run(self) -> None:
        while True:
            waiting = not self._groups  # nothing in flight: sleep until a job comes
            try:
                while True:
                    job = self._incoming.get(block=waiting)
                    waiting = False
                    if job is None:
                        return
                    self._admit(job)
                    if self.active >= MAX_STREAMS:
                        break
            except queue.Empty:
                pass
            for key in list(self._groups):
                group = self._groups[key]
                group.step()
                if not group.jobs:
                    del self._groups[key]
            self.active = sum(len(group.jobs) for group in self._groups.values())

    def _admit(self, job: Job) -> None:
        if job.length == 0 or job.cancelled.is_set():
            job.end("length")
            return
        group = self._groups.setdefault(id(job.lm), _Group(job.lm))
        try:
            group.admit(job)
        except Exception:  # the prime was checked before; whatever else fails ends this job alone
            job.end("error")
            return
        self.active += 1
