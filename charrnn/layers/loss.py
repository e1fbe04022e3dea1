"""Softmax cross-entropy over all positions at once."""

from __future__ import annotations

import numpy as np


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn `logits (N, V)` in place into softmax probabilities.

    Returns: the probabilities (N, V) (the same array) and log p[target] (N,).
    """
    n = logits.shape[0]
    logits -= logits.max(axis=1, keepdims=True)
    picked = logits[np.arange(n), targets]
    np.exp(logits, out=logits)
    total = logits.sum(axis=1)
    logits /= total[:, None]
    return logits, picked - np.log(total)


def softmax_xent(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient.

    Inputs: logits (N, V), overwritten with the gradient; targets (N,) ints.
    Returns: loss (mean over N of -log softmax(logits)[target], in nats), dlogits (N, V).
    """
    n = logits.shape[0]
    probs, log_p = log_softmax_at(logits, targets)
    loss = -float(np.sum(log_p, dtype=np.float64)) / n
    probs[np.arange(n), targets] -= 1
    probs *= 1.0 / n
    return loss, probs


def xent_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy in nats (no gradient). logits (N, V) are overwritten."""
    _, log_p = log_softmax_at(logits, targets)
    return -float(np.sum(log_p, dtype=np.float64))
