"""Encoder-decoder: reverse a string of letters (length 1 to 8).

The encoder reads the string; its final state is all the decoder gets. The decoder then
writes the letters in reverse order and an end mark. Accuracy is the fraction of held-out
random strings reversed exactly (end mark included).

    python examples/encoder_decoder_reverse.py [--steps 1200] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from charrnn.graphs import EncoderDecoder, fit

LETTERS, MAX_LEN, BATCH = 10, 8, 64
END = LETTERS  # output class after the last letter


def batch(rng: np.random.Generator, size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Strings of one random length: source (L, B) letters, target (L + 1, B) reversed + END."""
    length = int(rng.integers(1, MAX_LEN + 1))
    source = rng.integers(0, LETTERS, (length, size))
    return source, np.concatenate([source[::-1], np.full((1, size), END)])


def accuracy(model: EncoderDecoder, rng: np.random.Generator, per_length: int = 200) -> float:
    hits = total = 0
    for length in range(1, MAX_LEN + 1):
        source = rng.integers(0, LETTERS, (length, per_length))
        target = np.concatenate([source[::-1], np.full((1, per_length), END)])
        hits += int((model.predict(source, length + 1) == target).all(axis=0).sum())
        total += per_length
    return hits / total


def run(steps: int = 1200, seed: int = 0) -> float:
    model = EncoderDecoder(LETTERS, LETTERS + 1, cell="lstm", hidden_size=128, seed=seed)
    fit(model, batch, steps, lr=1e-2, seed=seed)
    return accuracy(model, np.random.default_rng(seed + 1000))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    acc = run(args.steps, args.seed)
    print(f"held-out exact reversals: {acc:.1%} ({time.perf_counter() - start:.1f}s)")
