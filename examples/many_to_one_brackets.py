"""Many-to-one: is a string of 12 brackets balanced?

Every string has six '(' and six ')', so counting is not enough: the classifier must notice
whether the running depth ever drops below zero. Half the strings are balanced. Accuracy is
measured on held-out strings.

    python examples/many_to_one_brackets.py [--steps 1500] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from charrnn.graphs import ManyToOne, fit

LENGTH, BATCH = 12, 64  # tokens: 0 = '(', 1 = ')'


def strings(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(LENGTH, size) bracket ids, half balanced, and their labels (1 = balanced)."""
    pool = np.tile([0] * (LENGTH // 2) + [1] * (LENGTH // 2), (size * 16, 1))
    pool = rng.permuted(pool, axis=1)
    depth = np.cumsum(np.where(pool == 0, 1, -1), axis=1)
    balanced = (depth >= 0).all(axis=1)
    half = size // 2
    chosen = np.concatenate([pool[balanced][:half], pool[~balanced][: size - half]])
    labels = np.concatenate([np.ones(half, np.int64), np.zeros(size - half, np.int64)])
    order = rng.permutation(size)
    return chosen[order].T.copy(), labels[order]


def run(steps: int = 1500, seed: int = 0) -> float:
    model = ManyToOne(2, 2, cell="gru", hidden_size=32, seed=seed)
    fit(model, lambda rng: strings(rng, BATCH), steps, lr=1e-2, seed=seed)
    ids, labels = strings(np.random.default_rng(seed + 1000), 2000)
    return float((model.predict(ids) == labels).mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    acc = run(args.steps, args.seed)
    print(f"held-out accuracy: {acc:.1%} ({time.perf_counter() - start:.1f}s)")
