"""Dynamic evaluation (Krause et al., 2018): the model keeps learning from the text it has scored.

The text is read as one sequence in segments of n characters. Each segment is scored first
(that score is the dynamic loss), then a copy of the weights takes one gradient step on it,
and the next segment is scored by the adapted copy, the state carried as in `evaluate`:

    rms:  theta <- theta - lr * g / (rms + eps) + rate * (theta_0 - theta)
    sgd:  theta <- theta - lr * g               + decay * (theta_0 - theta)

g is the gradient of the segment's mean loss (nats per char). `rms` is Krause et al.'s
RMS-normalised rule: `rms` is the root mean square of the gradients the model saw in training,
read from the checkpoint's optimizer (Adam's bias-corrected second moment, or Adagrad's sum of
squares over its steps), and `rate = min(1, decay * rms / mean(rms))` pulls every weight back
toward the trained weights theta_0, harder where training gradients were large. `sgd` is the
plain rule with a uniform decay. The checkpoint's weights are never changed.

The static loss (the trained weights, no adaptation) of the same text comes from the same pass,
so standard input is read once; both are exact over every character after the first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from charrnn.errors import ArgumentValueError, CharRNNError, check_int, check_number, check_str
from charrnn.evaluate import EvalResult
from charrnn.layers.loss import xent_sum
from charrnn.model import CharRNN, ModelShape

RMS_EPS = 1e-8  # added to the training gradients' RMS before dividing by it
RULES = {"rms": (5e-5, 3e-3), "sgd": (0.03, 0.0)}
"""Each rule's default (lr, decay): the best of a grid on validation text that neither the
model nor the text it is then measured on contains (benchmarks/dynamic_tune.py; RESULTS.md,
"Quality II")."""


@dataclass(frozen=True)
class DynamicSettings:
    """How the weights adapt: the update rule, its learning rate and decay toward the trained
    weights (None: the rule's default in `RULES`), and the characters per segment (one update
    each; 50 was best of 25, 50 and 100 on the same validation text)."""

    rule: str = "rms"
    lr: float | None = None
    decay: float | None = None
    segment: int = 50

    def __post_init__(self) -> None:
        if check_str(self.rule, "rule") not in RULES:
            raise ArgumentValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        lr, decay = RULES[self.rule]
        object.__setattr__(self, "lr", lr if self.lr is None else self.lr)
        object.__setattr__(self, "decay", decay if self.decay is None else self.decay)
        if not 0 <= check_number(self.lr, "lr") < float("inf"):
            raise ArgumentValueError(f"lr must be >= 0 and finite, got {self.lr}")
        if not 0 <= check_number(self.decay, "decay") <= 1:
            raise ArgumentValueError(f"decay must be in [0, 1], got {self.decay}")
        check_int(self.segment, "segment", 1)


@dataclass(frozen=True)
class DynamicResult:
    """The same text scored by the trained weights (static) and by the adapting copy (dynamic)."""

    static: EvalResult
    dynamic: EvalResult
    settings: DynamicSettings

    def to_dict(self) -> dict[str, Any]:
        return {"static": self.static.to_dict(), "dynamic": self.dynamic.to_dict(), "settings": asdict(self.settings)}


def gradient_rms(optim_state: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """Per parameter, the RMS of the training gradients, from a checkpoint's optimizer state
    and meta: sqrt(v / (1 - beta2^t)) for Adam, sqrt(sum_sq / t) for Adagrad; None without them."""
    t = meta.get("optimizer_t", 0)
    train = meta.get("config", {}).get("train", {})
    names = {k.partition(".")[2] for k in optim_state}
    if t <= 0 or not names:
        return None
    if all(f"v.{n}" in optim_state for n in names):
        correction = 1.0 - float(train.get("beta2", 0.999)) ** t
        return {n: np.sqrt(optim_state[f"v.{n}"] / correction) for n in names}
    if all(f"sum_sq.{n}" in optim_state for n in names):
        return {n: np.sqrt(optim_state[f"sum_sq.{n}"] / t) for n in names}
    return None


class _Update:
    """The per-segment update of one rule, with its step sizes and decay rates computed once:
    params (arrays, updated in place) toward `theta0` (copies of the trained weights)."""

    def __init__(
        self, params: dict[str, np.ndarray], settings: DynamicSettings, rms: dict[str, np.ndarray] | None
    ) -> None:
        self.params = params
        self.theta0 = {name: p.copy() for name, p in params.items()}
        if settings.rule == "sgd":
            self.step: dict[str, Any] = dict.fromkeys(params, settings.lr)
            self.rate: dict[str, Any] = dict.fromkeys(params, settings.decay)
            return
        if rms is None:
            raise CharRNNError(
                "--dynamic rms needs the training gradients' RMS from the checkpoint's optimizer "
                "(adam or adagrad), and this checkpoint has none; use the sgd rule"
            )
        dtype = next(iter(params.values())).dtype
        mean = float(np.mean(np.concatenate([r.ravel() for r in rms.values()])))
        self.step = {n: (settings.lr / (rms[n] + RMS_EPS)).astype(dtype) for n in params}
        self.rate = {n: np.minimum(1.0, settings.decay * rms[n] / max(mean, 1e-30)).astype(dtype) for n in params}

    def __call__(self, grads: dict[str, np.ndarray]) -> None:
        for name, p in self.params.items():
            p -= self.step[name] * grads[name]
            p += self.rate[name] * (self.theta0[name] - p)


def evaluate_dynamic(
    shape: ModelShape,
    params: dict[str, np.ndarray],
    blocks: Iterable[np.ndarray],
    settings: DynamicSettings,
    rms: dict[str, np.ndarray] | None = None,
) -> DynamicResult:
    """Static and dynamic loss of the concatenation of id `blocks` (read as they come, memory
    flat in the text's length), one stream from the zero state. `params` are not changed; the
    adapting copy is dropped at the end. `rms`: from `gradient_rms` (needed by the rms rule).
    A rate so large that the adapted weights overflow makes the dynamic loss infinite. The static
    pass is one of the places a text's cross-entropy is summed (see `evaluate.sum_xent`)."""
    static = CharRNN(shape, params)
    adapting = CharRNN(shape, {name: p.copy() for name, p in params.items()})
    update = _Update(adapting.params, settings, rms)
    V, n = shape.vocab_size, settings.segment
    static_state, state = static.initial_state(1), adapting.initial_state(1)
    static_total = dynamic_total = 0.0
    count = 0
    pending = np.zeros(0, np.int64)
    for block in itertools.chain(blocks, [None]):
        if block is not None:
            pending = np.concatenate([pending, np.asarray(block, np.int64)])
        while len(pending) > n or (block is None and len(pending) >= 2):
            seg = pending[: n + 1]
            x, y = seg[:-1, None], seg[1:, None]  # (T, 1)
            logits, static_state = static.logits(x, static_state, reuse_weights=count > 0)
            static_total += xent_sum(logits.reshape(V, -1), y.reshape(-1))
            with np.errstate(over="ignore", invalid="ignore"):  # a rate that makes the weights overflow
                loss, state = adapting.loss(x, y, state)
                dynamic_total += loss * len(x) if math.isfinite(loss) else math.inf
                update(adapting.backward())
            count += len(x)
            pending = pending[len(x) :]
    if count == 0:
        raise CharRNNError("text to evaluate has fewer than 2 characters")
    return DynamicResult(EvalResult(static_total / count, count), EvalResult(dynamic_total / count, count), settings)
