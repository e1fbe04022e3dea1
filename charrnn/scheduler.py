"""Continuous batching for a server: the streams of every request in flight advance together,
one batched forward call per character, in one thread that owns the model's arithmetic.

A request's choices are `Job`s, submitted together; over `max_streams` in flight the request is
refused whole (the server answers 429). The choices of one prompt share its feeding: the start
id and the prompt, `PRIME_PIECE` characters at a time between the other streams' steps, so a
long prompt never stalls them. Then each choice is a stream: it leaves when it has its
characters, generates a stop text or is cancelled (a client that went away), and its characters
go to its `emit` callback as they are drawn. Each stream draws from charrnn's counter-based
generator with its own key and stream index (`charrnn.sample.uniforms`), so a job's text
equals `charrnn sample`'s for the same seed, stream index, prime and options, whatever else
runs beside it. Streams are grouped by model: after a reload, jobs in flight finish on the model they started on.

This is one of two decoding loops; the other, `charrnn.sample.generate_ids`, runs a fixed set of
streams for `sample` and the Python API (tests/test_scheduler.py checks that they agree).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charrnn.api import LanguageModel
from charrnn.sample import Sampling, context_for, next_ids, uniforms

log = logging.getLogger("charrnn.serve")

MAX_STREAMS = 1024  # streams in flight (fed, stepping or waiting) at most; more is a refused request
PRIME_PIECE = 256  # prompt characters fed in one forward call
PRIME_BUDGET = 256  # prompt characters fed between two steps of the streams


class Logprobs:
    """A choice's log-probabilities, one row per character, before temperature, top-k or top-p:
    the character's id and log-probability, and the `top` most likely ids with theirs. Kept in
    numpy blocks, so a long echo holds no Python object per character; blocks of the prompt are
    shared by the choices that echo it."""

    def __init__(self, top: int, blocks: list[tuple[np.ndarray, ...]] | None = None) -> None:
        self.top = top
        self.blocks = list(blocks or [])  # (ids (n,), logprob (n,), top ids (n, top), top logprobs (n, top))
        self._small: list[tuple[np.ndarray, ...]] = []  # single rows, merged into a block every 256

    def add(self, logits: np.ndarray, chosen: np.ndarray) -> None:
        """Rows for logits (V, T) and the ids (T,) that came after them."""
        scores = logits.astype(np.float64)
        log_p = scores - scores.max(axis=0)
        log_p -= np.log(np.exp(log_p).sum(axis=0))
        best = np.argsort(-log_p, axis=0, kind="stable")[: self.top].T  # (T, top)
        rows = (chosen.astype(np.int32), log_p[chosen, np.arange(len(chosen))], best.astype(np.int32))
        block = (*rows, np.take_along_axis(log_p.T, best, axis=1))
        if len(chosen) > 1:
            self.blocks.append(block)
            return
        self._small.append(block)
        if len(self._small) == 256:
            self.blocks.append(tuple(np.concatenate(parts) for parts in zip(*self._small, strict=True)))
            self._small = []

    def with_top(self, top: int) -> Logprobs:
        """The same rows with only the `top` (<= this table's) most likely alternatives."""
        return Logprobs(top, [(i, lp, ids[:, :top], lps[:, :top]) for i, lp, ids, lps in self.blocks + self._small])

    def __len__(self) -> int:
        return sum(len(block[0]) for block in self.blocks + self._small)

    def rows(self, chars: tuple[str, ...], start: int = 0) -> Iterator[dict[str, Any]]:
        """{"token", "logprob", "top": {char: logprob, ...}} per character, in order, from row
        `start` (the blocks before it skipped whole)."""
        for ids, lp, top_ids, top_lp in self.blocks + self._small:
            if start >= len(ids):
                start -= len(ids)
                continue
            first, start = start, 0
            for k in range(first, len(ids)):
                top = {chars[i]: float(v) for i, v in zip(top_ids[k].tolist(), top_lp[k].tolist(), strict=True)}
                yield {"token": chars[ids[k]], "logprob": float(lp[k]), "top": top}


@dataclass
class Job:
    """One choice of a completion request. Its final text gathers in `text` (and, with
    `logprobs`, the top N per character in `table`); `emit` receives ("text", str, rows) as characters
    become final when `streaming` (rows: their `table` rows, or None without `logprobs`), and
    ("done", finish_reason) at the end, from the scheduler's thread.
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
    echo: bool = False  # with logprobs: the prompt's characters get theirs too, in `table`
    streaming: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    text: str = ""
    table: Logprobs | None = None  # with logprobs: from the first character drawn (or echoed)
    pending: str = ""  # drawn characters held back while they may begin a stop text
    made: int = 0
    on_end: Callable[[], None] | None = None  # the scheduler's: frees the job's place
    ended: bool = False

    @property
    def infos(self) -> list[dict[str, Any]]:
        """The table's rows: {"token", "logprob", "top"} per character."""
        return [] if self.table is None else list(self.table.rows(self.lm.vocab.chars))

    def add(self, text: str) -> None:
        self.text += text
        if self.streaming and text:
            rows = None
            if self.table is not None:  # the table ends with a row per character made, held back ones too
                first = len(self.table) - self.made + len(self.text) - len(text)
                rows = list(itertools.islice(self.table.rows(self.lm.vocab.chars, first), len(text)))
            self.emit(("text", text, rows))

    def end(self, reason: str) -> None:
        """Once: "length", "stop", "cancelled" (its client went away) or "error"."""
        if self.ended:
            return
        self.ended = True
        if self.on_end is not None:
            self.on_end()
        self.emit(("done", reason))


def _ended_if_cancelled(job: Job) -> bool:
    if job.cancelled.is_set():
        job.end("cancelled")
    return job.ended


class _Priming:
    """The choices of one prompt while their prompt is fed: the start id and the prompt's ids,
    `PRIME_PIECE` at a time between the other streams' steps, from the zero state (one stream:
    the choices share it). With echo and logprobs, the prompt's characters get theirs as they go."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        lm = jobs[0].lm
        self.ids = context_for(lm.vocab, jobs[0].prime)
        self.fed = 0
        self.state = lm.model.initial_state(1)
        self.logits = np.zeros((lm.shape.vocab_size, 1), np.float32)  # (V, 1): after the last id fed
        top = [job.logprobs for job in jobs if job.echo and job.logprobs is not None]
        self.table = Logprobs(max(top)) if top else None  # the prompt's, for the choices that echo it

    def feed(self, steps: int, reuse_weights: bool) -> int:
        """Feed up to `steps` more ids; returns how many were fed."""
        lm = self.jobs[0].lm
        piece = self.ids[self.fed : self.fed + steps]
        logits, self.state = lm.model.logits(piece[:, None], self.state, reuse_weights=reuse_weights)
        if self.table is not None:  # the prediction of each next prompt character
            nxt = self.ids[self.fed + 1 : self.fed + 1 + len(piece)]
            self.table.add(logits[:, : len(nxt), 0], nxt)
        self.fed += len(piece)
        self.logits = logits[:, -1]
        return len(piece)

    @property
    def done(self) -> bool:
        return self.fed == len(self.ids)


class _Group:
    """The streams of one model in flight: state (L, S, N, H) and the logits they draw from
    (V, N); and the prompts still being fed (see `prime`)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.jobs: list[Job] = []
        self.priming: list[_Priming] = []
        self.state = lm.model.initial_state(0)
        self.logits = np.zeros((lm.shape.vocab_size, 0), np.float32)
        self.prepared = False  # whether the model's weights are prepared for inference (see CharRNN.logits)

    def prime(self, budget: int) -> None:
        """Feed up to `budget` prompt ids, the prompt with the fewest left first (a short prompt
        never waits behind a long one); a prompt fed whole makes its choices streams (or ends
        those that want no characters)."""
        self.priming.sort(key=lambda entry: len(entry.ids) - entry.fed)
        while budget > 0 and self.priming:
            entry = self.priming[0]
            entry.jobs = [job for job in entry.jobs if not _ended_if_cancelled(job)]
            if entry.jobs and not entry.done:
                budget -= entry.feed(min(budget, PRIME_PIECE), reuse_weights=self.prepared)
                self.prepared = True
            if not entry.jobs or entry.done:
                self.priming.pop(0)
                for job in entry.jobs:
                    self._start(job, entry)

    def _start(self, job: Job, entry: _Priming) -> None:
        if job.logprobs is not None:
            echoed = job.echo and entry.table is not None
            job.table = entry.table.with_top(job.logprobs) if echoed else Logprobs(job.logprobs)
        if job.length == 0:
            job.end("length")
            return
        self.jobs.append(job)
        self.state = np.concatenate([self.state, entry.state], axis=2)
        self.logits = np.concatenate([self.logits, entry.logits], axis=1)

    def step(self) -> None:
        """Draw one character for every stream, hand it out, drop finished streams, feed the rest."""
        if not self.jobs:
            return
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

    def end_all(self, reason: str) -> None:
        for job in [*self.jobs, *(job for entry in self.priming for job in entry.jobs)]:
            job.end(reason)
        self.jobs, self.priming = [], []

    def _hand_out(self, job: Job, char_id: int, logits: np.ndarray) -> bool:
        """Give the job its character; whether the job has ended."""
        if _ended_if_cancelled(job):
            return True
        job.made += 1
        if job.table is not None:
            job.table.add(logits[:, None], np.array([char_id]))
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


class Scheduler(threading.Thread):
    """The thread that runs every job (see the module docstring). `submit` from any thread."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        super().__init__(name="charrnn-scheduler", daemon=True)
        self.max_streams = max_streams
        self._incoming: queue.Queue[list[Job] | None] = queue.Queue()
        self._groups: dict[int, _Group] = {}
        self._lock = threading.Lock()
        self.in_flight = 0  # jobs submitted and not ended
        self.active = 0  # streams drawing characters
        self.waiting = 0  # in flight but not drawing yet: queued, or their prompt being fed

    def submit(self, jobs: list[Job]) -> bool:
        """Take a request's jobs, unless they would put more than `max_streams` in flight."""
        with self._lock:
            if self.in_flight + len(jobs) > self.max_streams:
                return False
            self.in_flight += len(jobs)
        for job in jobs:
            job.on_end = self._release
        self._incoming.put(jobs)
        return True

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def stop(self) -> None:
        self._incoming.put(None)

    def run(self) -> None:
        while True:
            try:
                block = not self._groups  # nothing in flight: sleep until jobs come
                while True:
                    jobs = self._incoming.get(block=block)
                    block = False
                    if jobs is None:
                        return
                    self._admit(jobs)
            except queue.Empty:
                pass
            for key in list(self._groups):
                group = self._groups[key]
                try:
                    group.prime(PRIME_BUDGET)
                    group.step()
                except Exception as err:  # a bug or a lost resource: these jobs fail, the others go on
                    log.error("charrnn: %d stream(s) failed: %s: %s", len(group.jobs), type(err).__name__, err)
                    group.end_all("error")
                if not group.jobs and not group.priming:
                    del self._groups[key]
            self.active = sum(len(group.jobs) for group in self._groups.values())
            self.waiting = self.in_flight - self.active

    def _admit(self, jobs: list[Job]) -> None:
        """Queue the jobs' prompts for feeding, the choices of one prompt together; a job that
        wants nothing fed (no characters, no prompt log-probabilities) ends here."""
        for job in jobs:
            wants_prompt = job.echo and job.logprobs is not None
            if job.length == 0 and not wants_prompt:
                job.end("length")
        live = [job for job in jobs if not _ended_if_cancelled(job)]
        for job in live:
            group = self._groups.setdefault(id(job.lm), _Group(job.lm))
            last = group.priming[-1] if group.priming else None
            if last is not None and last.fed == 0 and last.jobs[0].prime is job.prime and last.jobs[-1].key == job.key:
                last.jobs.append(job)
                continue
            try:
                group.priming.append(_Priming([job]))
            except Exception as err:  # the prompt was checked before; whatever else fails ends this job alone
                log.error("charrnn: a stream failed: %s: %s", type(err).__name__, err)
                job.end("error")
