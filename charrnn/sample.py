"""Generation: prime the state, then feed each sampled character back in as the next input."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from charrnn.model import CharRNN
from charrnn.vocab import Vocab


def next_ids(
    logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0, greedy: bool = False
) -> np.ndarray:
    """Pick one id per row of `logits (N, V)`: argmax, or a draw from softmax(logits / temperature)
    restricted to the `top_k` most likely ids (0: all)."""
    if greedy:
        return logits.argmax(axis=1)
    scaled = logits.astype(np.float64) / temperature
    if 0 < top_k < scaled.shape[1]:
        kth = np.partition(scaled, -top_k, axis=1)[:, -top_k][:, None]
        scaled[scaled < kth] = -np.inf
    scaled -= scaled.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(scaled), axis=1)
    u = rng.random((len(cdf), 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), cdf.shape[1] - 1)


def generate(
    model: CharRNN,
    vocab: Vocab,
    length: int,
    rng: np.random.Generator,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    num_samples: int = 1,
) -> Iterator[np.ndarray]:
    """An iterator over `length` steps of ids (num_samples,), one per generated character.

    With a prime, the state is built from it and the first character follows it. Without, the
    model is started on a newline (or, if the vocabulary lacks one, a random character) that
    is not part of the output. A prime with characters outside the vocabulary fails here,
    before anything is generated. The weights are prepared on the first step and reused after
    it, so the model's parameters must not change while the iterator is being consumed.
    """
    if prime:
        seed_ids = vocab.encode(prime).astype(np.int64)
    elif "\n" in vocab.chars:
        seed_ids = np.array([vocab.chars.index("\n")])
    else:
        seed_ids = rng.integers(len(vocab), size=1)
    return _feedback_loop(model, seed_ids, length, rng, temperature, top_k, greedy, num_samples)


def _feedback_loop(
    model: CharRNN,
    seed_ids: np.ndarray,
    length: int,
    rng: np.random.Generator,
    temperature: float,
    top_k: int,
    greedy: bool,
    num_samples: int,
) -> Iterator[np.ndarray]:
    state = model.initial_state(num_samples)
    x = np.repeat(seed_ids[:, None], num_samples, axis=1)  # (P, N)
    for step in range(length):
        logits, state = model.logits(x, state, reuse_weights=step > 0)
        ids = next_ids(logits[:, -1].T, rng, temperature, top_k, greedy)
        yield ids
        x = ids[None, :]
