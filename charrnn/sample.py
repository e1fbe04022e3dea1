"""Generation: prime the state, then feed each sampled character back in as the next input.

Every stream starts from the model's *start state* (see `charrnn.vocab.Vocab.start_id`): the
zero state fed one newline, so a sample begins as if at the start of a line, whatever the
batch. Randomness is counter-based: the draw for stream s's k-th character is a hash of
(seed, s, k), so a stream's text depends on its seed, its prime and its index alone, never on
how many other streams ran beside it or in which batch.

A prime longer than `LONG_PRIME` characters is fed alone first, piece by piece with the state
carried (`prime_state`), so a prime of any length costs flat memory; its stream then joins the
batch with only the prime's last character left to feed.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from charrnn.data import Text, pieces
from charrnn.errors import ArgumentTypeError, ArgumentValueError, InvalidUsageError, check_int, check_number
from charrnn.model import CharRNN
from charrnn.vocab import Vocab

BATCH_STREAMS = 1024  # streams generated together; more samples are generated batch after batch
LONG_PRIME = 1 << 16  # characters past which a prime is fed alone, piece by piece
PRIME_CHUNK_STEPS = 1024  # steps per forward call while feeding such a prime


@dataclass(frozen=True)
class Sampling:
    """How the next character is chosen from the model's logits, applied in this order:
    divide by `temperature`, keep the `top_k` most likely (0: all), keep the smallest set of
    most likely characters whose probability reaches `top_p` (1: all), draw. `greedy` takes the
    most likely character instead (the others are then ignored)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self) -> None:
        temperature, top_p = check_number(self.temperature, "temperature"), check_number(self.top_p, "top_p")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ArgumentValueError(f"temperature must be a positive number, got {temperature}")
        check_int(self.top_k, "top_k", 0)
        if not 0 < top_p <= 1:
            raise ArgumentValueError(f"top_p must be in (0, 1], got {top_p}")
        if not isinstance(self.greedy, bool):
            raise ArgumentTypeError(f"greedy must be True or False, got {self.greedy!r:.40}")


_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (a bijection that scrambles every bit)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seed_key(seed: int | None) -> int:
    """The 64-bit key of a seed; None draws one from the operating system."""
    return secrets.randbits(64) if seed is None else int(_mix(np.array([seed & _MASK64], np.uint64))[0])


def uniforms(key: int | np.ndarray, streams: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1), one per (stream, counter) pair: a hash of (key, stream, counter).

    Inputs: key, one for all or (N,) uint64 (a server's requests each have their own); streams
    (N,) and counters (N,) non-negative ints. Returns: (N,) float64.
    """
    s = _mix(streams.astype(np.uint64) ^ np.uint64(key))
    x = _mix(s + counters.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def next_ids(logits: np.ndarray, u: np.ndarray, sampling: Sampling = Sampling()) -> np.ndarray:
    """One id per row of `logits (N, V)`: argmax, or a draw (with `u (N,)` uniforms in [0, 1))
    from softmax(logits / temperature) restricted by top-k, then top-p (see `Sampling`)."""
    if sampling.greedy:
        return logits.argmax(axis=1)
    with np.errstate(over="ignore"):
        scaled = logits.astype(np.float64) / sampling.temperature
    overflow = ~np.isfinite(scaled).all(axis=1)  # a temperature so low that the logits overflow
    if overflow.any():  # sample at the limit T -> 0: greedily
        picks = next_ids(np.where(overflow[:, None], 0.0, logits), u, sampling)
        picks[overflow] = logits[overflow].argmax(axis=1)
        return picks
    if 0 < sampling.top_k < scaled.shape[1]:
        kth = np.partition(scaled, -sampling.top_k, axis=1)[:, -sampling.top_k][:, None]
        scaled[scaled < kth] = -np.inf
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    if sampling.top_p < 1:
        probs /= probs.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(ranked, axis=1) - ranked  # probability of the more likely ones
        ranked[before >= sampling.top_p] = 0  # the most likely one always stays (before = 0)
        np.put_along_axis(probs, order, ranked, axis=1)
    cdf = np.cumsum(probs, axis=1)
    picks = (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1)
    return np.minimum(picks, cdf.shape[1] - 1)


def context_for(vocab: Vocab, prime: str) -> np.ndarray:
    """What a stream is fed before its first generated character: the start id, then the
    prime's ids. A prime with characters outside the vocabulary fails here."""
    return np.concatenate([[vocab.start_id], vocab.encode(prime)]).astype(np.int64)


def prime_state(model: CharRNN, vocab: Vocab, prime: Text) -> tuple[np.ndarray, np.ndarray]:
    """Feed the start id and all of `prime` but its last character, piece by piece with the
    state carried. Returns the state (L, S, 1, H) and what is left to feed: the last id (1,)."""
    state, last, fed = model.initial_state(1), np.array([vocab.start_id], np.int64), 0
    for piece in pieces(prime):
        seq = np.concatenate([last, vocab.encode(piece)]).astype(np.int64)
        for start in range(0, len(seq) - 1, PRIME_CHUNK_STEPS):
            chunk = seq[start : min(start + PRIME_CHUNK_STEPS, len(seq) - 1)]
            _, state = model.logits(chunk[:, None], state, reuse_weights=fed > 0)
            fed += len(chunk)
        last = seq[-1:]
    return state, last


def starts(model: CharRNN, vocab: Vocab, primes: Sequence[Text]) -> tuple[list[np.ndarray], np.ndarray]:
    """Where each stream starts: its context (ids still to feed) and the initial states
    (L, S, N, H). A short prime's context is `context_for` it, from the zero state; a long one
    has been fed by `prime_state`."""
    contexts, state0 = [], model.initial_state(len(primes))
    for i, prime in enumerate(primes):
        if len(prime) > LONG_PRIME:
            state, context = prime_state(model, vocab, prime)
            state0[:, :, i] = state[:, :, 0]
        else:
            context = context_for(vocab, prime)  # type: ignore[arg-type] (a short prime is a str)
        contexts.append(context)
    return contexts, state0


def generate_ids(
    model: CharRNN,
    contexts: Sequence[np.ndarray],
    length: int,
    sampling: Sampling = Sampling(),
    key: int = 0,
    stop: np.ndarray | None = None,
    first_stream: int = 0,
    state0: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Generate up to `length` ids after each context, all streams in one batched loop.

    Inputs: contexts, N arrays of ids (each >= 1 long) and the states (L, S, N, H) they start
    from (None: zero; see `starts`); `key` from
    `seed_key`; stop (K,) ids that end a stream once generated (they are yielded); stream i
    draws as stream `first_stream + i`. Contexts may differ in length: a stream still reading
    its context is fed its next context id while the others are fed their last sample.
    Yields per step: (stream indices (n,), ids (n,)) for the streams that drew a character then.
    Finished streams leave the batch. The weights are prepared on the first call and reused
    after it, so the parameters must not change while the iterator is being consumed.

    The server decodes in a loop of its own (`charrnn.scheduler`: streams join and leave between
    steps, up to 4 stop texts, the stop left out of the text); tests/test_scheduler.py checks
    that both give the same characters.
    """
    N = len(contexts)
    if N == 0 or length == 0:
        return
    lens = np.array([len(c) for c in contexts])
    padded = np.full((lens.max(), N), -1, np.int64)
    for i, c in enumerate(contexts):
        padded[: len(c), i] = c
    common = int(lens.min())
    logits, state = model.logits(padded[:common], model.initial_state(N) if state0 is None else state0)
    last = logits[:, -1]  # (V, n): the logits after each live stream's latest input
    alive = np.arange(N)  # stream indices still generating
    made = np.zeros(N, np.int64)  # characters generated per stream
    K = 0 if stop is None else len(stop)
    tail = np.full((N, K), -1, np.int64)  # the last K generated ids per stream
    t = common  # position of the next input
    while True:
        drawing = lens[alive] <= t
        x = padded[t, alive] if t < len(padded) else np.full(len(alive), -1, np.int64)
        if drawing.any():
            who = alive[drawing]
            u = uniforms(key, who + first_stream, made[who])
            ids = next_ids(last[:, drawing].T, u, sampling)
            x[drawing] = ids
            made[who] += 1
            yield who, ids
            done = made[alive] >= length
            if K:
                tail[who] = np.concatenate([tail[who, 1:], ids[:, None]], axis=1)
                done |= (tail[alive] == stop).all(axis=1)
            if done.any():
                keep = ~done
                alive, x, state = alive[keep], x[keep], state[:, :, keep]
                if len(alive) == 0:
                    return
        logits, state = model.logits(x[None, :], state, reuse_weights=True)
        last = logits[:, 0]
        t += 1


def generate(
    model: CharRNN,
    vocab: Vocab,
    primes: Sequence[Text],
    length: int,
    sampling: Sampling = Sampling(),
    seed: int | None = None,
    stop: str | None = None,
    batch_streams: int = BATCH_STREAMS,
) -> Iterator[str]:
    """One generated text per prime (the prime not included), in order, `batch_streams` streams
    at a time, so memory stays flat however many primes there are. Each text ends with `stop`
    if it generated it, and holds at most `length` characters. Bad primes or a bad stop text
    fail here, before anything is generated."""
    for prime in primes:
        for piece in pieces(prime):
            vocab.encode(piece)
    return _batches(model, vocab, primes, length, sampling, seed_key(seed), stop_ids_for(vocab, stop), batch_streams)


def _batches(
    model: CharRNN,
    vocab: Vocab,
    primes: Sequence[Text],
    length: int,
    sampling: Sampling,
    key: int,
    stop_ids: np.ndarray | None,
    batch_streams: int,
) -> Iterator[str]:
    for first in range(0, len(primes), batch_streams):
        batch = primes[first : first + batch_streams]
        out: list[list[int]] = [[] for _ in batch]
        contexts, state0 = starts(model, vocab, batch)
        for who, ids in generate_ids(model, contexts, length, sampling, key, stop_ids, first, state0):
            for i, char_id in zip(who.tolist(), ids.tolist(), strict=True):
                out[i].append(char_id)
        yield from (vocab.decode(ids) for ids in out)


def stream(
    model: CharRNN,
    vocab: Vocab,
    prime: Text,
    length: int,
    sampling: Sampling = Sampling(),
    seed: int | None = None,
    stop: str | None = None,
) -> Iterator[str]:
    """One sample, character by character as it is generated (the text of `generate`'s first
    prime). A bad prime or stop text fails here, before anything is generated."""
    stop_ids = stop_ids_for(vocab, stop)
    contexts, state0 = starts(model, vocab, [prime])
    steps = generate_ids(model, contexts, length, sampling, seed_key(seed), stop_ids, state0=state0)
    return (vocab.chars[int(ids[0])] for _, ids in steps)


def stop_ids_for(vocab: Vocab, stop: str | None) -> np.ndarray | None:
    """The ids of a stop text (None: no stop); an empty one, or one the model cannot generate, is
    a usage error."""
    if stop is None:
        return None
    if not stop:
        raise InvalidUsageError("the stop text is empty; leave it out for no stop")
    unknown = set(stop) - set(vocab.chars)
    if unknown:
        raise InvalidUsageError(f"the stop text has characters the model never generates: {sorted(unknown)}")
    return vocab.encode(stop).astype(np.int64)
