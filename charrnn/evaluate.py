"""How well a model predicts a text: nats per char, bits per char, perplexity."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.layers.loss import xent_sum
from charrnn.model import CharRNN


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy, nats per predicted character
    chars: int  # characters predicted

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        """e^loss; inf where that overflows a float (a loss past ~709 nats)."""
        return math.exp(self.loss) if self.loss < 709 else math.inf

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "bpc": self.bpc, "perplexity": self.perplexity, "chars": self.chars}


def evaluate(model: CharRNN, ids: np.ndarray, streams: int = 1, seq_len: int = 256) -> EvalResult:
    """Mean loss of predicting ids[1:] from what precedes them, chunk by chunk with the state carried.

    streams=1 reads the whole text as one sequence from a zero state and predicts every
    character after the first (exact). streams=S > 1 cuts it into S contiguous pieces read in
    parallel, each from a zero state (faster; fewer than S trailing characters go unscored).
    """
    if len(ids) < 2:
        raise CharRNNError(f"text to evaluate has {len(ids)} characters; at least 2 are needed")
    S = max(1, min(streams, len(ids) - 1))
    L = (len(ids) - 1) // S
    inputs, targets = ids[: S * L].reshape(S, L), ids[1 : S * L + 1].reshape(S, L)
    total, _ = sum_xent(model, inputs, targets, model.initial_state(S), seq_len, reuse_weights=False)
    return EvalResult(loss=total / (S * L), chars=S * L)


def evaluate_blocks(model: CharRNN, blocks: Iterable[np.ndarray], seq_len: int = 256) -> EvalResult:
    """`evaluate` with one stream over the concatenation of id `blocks`, read as they come (a
    file's blocks, encoded), the state and the last id carried across blocks: the same loss, in
    memory that does not grow with the text."""
    state, total, count, last = model.initial_state(1), 0.0, 0, np.zeros(0, np.int64)
    for block in blocks:
        ids = np.concatenate([last, block]).astype(np.int64)
        if len(ids) >= 2:
            part, state = sum_xent(model, ids[None, :-1], ids[None, 1:], state, seq_len, reuse_weights=count > 0)
            total, count = total + part, count + len(ids) - 1
        last = ids[-1:]
    if count == 0:
        raise CharRNNError(f"text to evaluate has {len(last)} characters; at least 2 are needed")
    return EvalResult(loss=total / count, chars=count)


def sum_xent(
    model: CharRNN, inputs: np.ndarray, targets: np.ndarray, state: np.ndarray, seq_len: int, reuse_weights: bool
) -> tuple[float, np.ndarray]:
    """Summed cross-entropy of S streams: inputs and targets (S, L) ids, state (L, S, B, H) at
    their start, `seq_len` steps per forward call. Returns the sum (nats) and the final state.

    A text's summed cross-entropy is also computed, each for its own job, by `model.CharRNN.loss`
    (training), `score.sequence_nll` (records batched by length), `dynamic.evaluate_dynamic`
    (its static pass), `viz.trace` (per character), `scheduler.Logprobs` (the server's, per
    character) and `torch_engine.TorchEngine.evaluate`; tests/test_cross_entropy.py checks that
    they agree."""
    V = model.shape.vocab_size
    total = 0.0
    for start in range(0, inputs.shape[1], seq_len):
        x = np.ascontiguousarray(inputs[:, start : start + seq_len].T, dtype=np.int64)
        y = np.ascontiguousarray(targets[:, start : start + seq_len].T, dtype=np.int64)
        logits, state = model.logits(x, state, reuse_weights=reuse_weights or start > 0)
        total += xent_sum(logits.reshape(V, -1), y.reshape(-1))
    return total, state
