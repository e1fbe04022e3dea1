"""Adam, Adagrad and SGD with momentum, decoupled weight decay, global-norm clipping, and the
learning-rate schedules (constant, step, cosine, each with an optional linear warm-up).

Optimizer state is a flat dict of named arrays (`m.<param>`, `v.<param>`, ...) plus the step
count, so it saves into a checkpoint next to the weights. Updates are in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn.errors import NonFiniteError

SLOTS = {"adam": ("m", "v"), "adagrad": ("sum_sq",), "sgd": ("velocity",)}


@dataclass(frozen=True)
class OptimizerSettings:
    """What an `Optimizer` needs besides the learning rate: its kind (a key of `SLOTS`) and
    constants. The defaults are the algorithms' usual ones; a run takes its own from
    `TrainConfig.optimizer_settings()`."""

    kind: str = "adam"
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    eps: float = 1e-8  # adam, adagrad
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0  # decoupled, per unit of lr, on matrices only


@dataclass(frozen=True)
class Schedule:
    """The learning rate over the steps of a run (see `learning_rate`); a run takes its own from
    `TrainConfig.schedule()`."""

    lr: float
    kind: str = "constant"  # constant | step | cosine
    decay: float = 1.0  # step: the factor applied every `decay_every` steps
    decay_every: int = 1000
    warmup_steps: int = 0
    min_lr: float = 0.0  # cosine: the lr at the horizon and after it
    max_steps: int = 10_000  # cosine: the default horizon


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry (accumulated in float64)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most `max_norm` (0: no limit).

    Returns the norm before clipping. A non-finite norm raises NonFiniteError.
    """
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise NonFiniteError("gradient is not finite (NaN or inf)")
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


def learning_rate(schedule: Schedule, step: int, horizon: int | None = None) -> float:
    """The learning rate of update `step` (0 for the first).

    A linear warm-up over the first `warmup_steps` (lr * (step + 1) / warmup_steps), then by
    `kind`: constant lr; step, lr * decay ** (step // decay_every); cosine, from lr at the end of
    the warm-up down to min_lr at `horizon` (default: max_steps), min_lr after it.
    """
    c = schedule
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.kind == "step":
        return c.lr * c.decay ** (step // c.decay_every)
    if c.kind == "cosine":
        end = c.max_steps if horizon is None else horizon
        done = min((step - c.warmup_steps) / max(end - c.warmup_steps, 1), 1.0)
        return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * done))
    return c.lr


class Optimizer:
    """One of `SLOTS`' optimizers over a dict of parameters."""

    def __init__(self, settings: OptimizerSettings, params: dict[str, np.ndarray]) -> None:
        self.settings = settings
        self.kind = settings.kind
        self.t = 0  # updates made
        self.state = {f"{slot}.{name}": np.zeros_like(p) for slot in SLOTS[self.kind] for name, p in params.items()}
        self._tmp = {name: np.empty_like(p) for name, p in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update every parameter in place from its gradient."""
        self.t += 1
        c = self.settings
        for name, p in params.items():
            g, tmp = grads[name], self._tmp[name]
            if c.weight_decay and p.ndim >= 2:  # decoupled, on weight matrices only (not biases)
                p *= 1 - lr * c.weight_decay
            if self.kind == "adam":
                m, v = self.state[f"m.{name}"], self.state[f"v.{name}"]
                m *= c.beta1
                np.multiply(g, 1 - c.beta1, out=tmp)
                m += tmp
                v *= c.beta2
                np.multiply(g, g, out=tmp)
                tmp *= 1 - c.beta2
                v += tmp
                # PyTorch's form: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
                np.sqrt(v, out=tmp)
                tmp *= 1 / math.sqrt(1 - c.beta2**self.t)
                tmp += c.eps
                np.divide(m, tmp, out=tmp)
                tmp *= lr / (1 - c.beta1**self.t)
            elif self.kind == "adagrad":
                sum_sq = self.state[f"sum_sq.{name}"]
                np.multiply(g, g, out=tmp)
                sum_sq += tmp
                np.sqrt(sum_sq, out=tmp)
                tmp += c.eps
                np.divide(g, tmp, out=tmp)
                tmp *= lr
            else:
                velocity = self.state[f"velocity.{name}"]
                velocity *= c.momentum
                velocity += g
                np.multiply(velocity, lr, out=tmp)
            p -= tmp

    def load_state(self, state: dict[str, np.ndarray], t: int) -> None:
        """Restore state saved from an optimizer of the same kind over the same parameters."""
        for key, array in state.items():
            np.copyto(self.state[key], array)
        self.t = t
