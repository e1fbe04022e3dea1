"""The optimizers' helpers (`charrnn.optim`): clipping, learning-rate schedules and warm-up."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from charrnn.config import TrainConfig
from charrnn.errors import NonFiniteError
from charrnn.optim import clip_by_global_norm, global_norm, learning_rate


def test_learning_rate_decays_in_steps() -> None:
    config = TrainConfig(lr=0.1, lr_decay=0.5, lr_decay_every=10)
    assert [learning_rate(config.schedule(), s) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]


def test_clipping_scales_to_the_limit_and_leaves_small_gradients() -> None:
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_by_global_norm(grads, 1.0) == 5.0
    assert math.isclose(global_norm(grads), 1.0)
    small = {"a": np.array([0.3, 0.4])}
    clip_by_global_norm(small, 1.0)
    np.testing.assert_array_equal(small["a"], [0.3, 0.4])


def test_non_finite_gradient_is_refused() -> None:
    with pytest.raises(NonFiniteError):
        clip_by_global_norm({"a": np.array([1.0, np.nan])}, 5.0)


def test_warmup_rises_linearly_to_lr_then_the_schedule_takes_over() -> None:
    config = TrainConfig(lr=0.1, warmup_steps=4, lr_schedule="constant", max_steps=100)
    assert [learning_rate(config.schedule(), s) for s in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_cosine_falls_from_lr_to_min_lr_at_the_horizon_and_stays() -> None:
    config = TrainConfig(lr=0.1, min_lr=0.01, warmup_steps=10, lr_schedule="cosine", max_steps=110)
    assert learning_rate(config.schedule(), 10) == pytest.approx(0.1)  # the end of the warm-up: the peak
    assert learning_rate(config.schedule(), 60) == pytest.approx(0.055)  # halfway: the mean of lr and min_lr
    assert learning_rate(config.schedule(), 110) == pytest.approx(0.01)
    assert learning_rate(config.schedule(), 500) == pytest.approx(0.01)
    lrs = [learning_rate(config.schedule(), s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert learning_rate(config.schedule(), 35, horizon=60) == pytest.approx(0.055)  # a horizon set by --time


def test_schedule_keys_are_validated() -> None:
    from charrnn.config import build_config
    from charrnn.errors import InvalidUsageError

    for bad in ({"lr_schedule": "linear"}, {"warmup_steps": -1}, {"min_lr": 1.0}, {"weight_decay": -0.1}):
        with pytest.raises(InvalidUsageError, match=f"train.{next(iter(bad))}"):
            build_config([{"train": bad}])
