"""One-to-many: spell a number word from its class id.

The network gets the class id (0-9) once, at the first step, and no input after it; from its
hidden state alone it must write the letters of "zero" ... "nine" and an end mark.
Accuracy is the fraction of the ten words spelled exactly.

    python examples/one_to_many_spell.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from charrnn.graphs import OneToMany, fit

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = [*sorted(set("".join(WORDS))), "."]  # '.' ends a word and pads after it
STEPS = max(map(len, WORDS)) + 1
SPELLING = np.array([[LETTERS.index(ch) for ch in word.ljust(STEPS, ".")] for word in WORDS]).T  # (STEPS, 10)


def batch(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    classes = rng.integers(0, len(WORDS), size)
    return classes, SPELLING[:, classes]


def spell(model: OneToMany, classes: np.ndarray) -> list[str]:
    letters = model.predict(classes, STEPS).T
    return ["".join(LETTERS[i] for i in row).split(".")[0] for row in letters]


def run(steps: int = 300, seed: int = 0) -> float:
    model = OneToMany(len(WORDS), len(LETTERS), cell="rnn", hidden_size=64, seed=seed)
    fit(model, batch, steps, lr=1e-2, seed=seed)
    spelled = spell(model, np.arange(len(WORDS)))
    return sum(s == w for s, w in zip(spelled, WORDS, strict=True)) / len(WORDS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    acc = run(args.steps, args.seed)
    print(f"words spelled exactly: {acc:.0%} ({time.perf_counter() - start:.1f}s)")
