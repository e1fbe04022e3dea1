"""Softmax cross-entropy over all positions at once; scores are class-major `(V, N)`."""

from __future__ import annotations

import numpy as np


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn `logits (V, N)` in place into softmax probabilities (each column sums to 1).

    Returns: the probabilities (V, N) (the same array) and log p[target] (N,).
    """
    n = logits.shape[1]
    logits -= logits.max(axis=0)
    picked = logits[targets, np.arange(n)]
    np.exp(logits, out=logits)
    total = logits.sum(axis=0)
    logits /= total
    return logits, picked - np.log(total)


def softmax_xent(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient.

    Inputs: logits (V, N), overwritten with the gradient; targets (N,) ints.
    Returns: loss (mean over N of -log softmax(logits[:, n])[target], in nats), dlogits (V, N).
    """
    n = logits.shape[1]
    probs, log_p = log_softmax_at(logits, targets)
    loss = -float(np.sum(log_p, dtype=np.float64)) / n
    probs[targets, np.arange(n)] -= 1
    probs *= 1.0 / n
    return loss, probs


def xent_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy in nats (no gradient). logits (V, N) are overwritten."""
    _, log_p = log_softmax_at(logits, targets)
    return -float(np.sum(log_p, dtype=np.float64))
