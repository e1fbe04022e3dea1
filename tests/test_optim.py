from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn.config import TrainConfig
from charrnn.errors import NonFiniteError
from charrnn.optim import clip_by_global_norm, global_norm, learning_rate


def test_learning_rate_decays_in_steps() -> None:
    config = TrainConfig(lr=0.1, lr_decay=0.5, lr_decay_every=10)
    assert [learning_rate(config, s) for s in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]


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
