"""float32 end to end, and the training step reuses its buffers instead of allocating."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from charrnn.config import TrainConfig
from charrnn.model import CharRNN, ModelShape, Regularisers, init_params
from charrnn.optim import Optimizer, clip_by_global_norm

T, B, V, H = 128, 16, 40, 64


def setup(cell: str, dtype=np.float32):
    shape = ModelShape(V, cell, H, 2)
    model = CharRNN(shape, init_params(shape, np.random.default_rng(0), np.dtype(dtype)), Regularisers(dropout=0.2))
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    optimizer = Optimizer(TrainConfig().optimizer_settings(), model.params)
    state = model.initial_state(B)

    def step():
        nonlocal state
        _, state = model.loss(ids, targets, state, rng)
        grads = model.backward()
        clip_by_global_norm(grads, 5.0)
        optimizer.step(model.params, grads, 1e-3)
        return grads

    return model, optimizer, step


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_parameter_gradient_and_optimizer_buffer_keeps_the_dtype(cell: str, dtype) -> None:
    model, optimizer, step = setup(cell, dtype)
    step()
    grads = step()
    for name, array in [*model.params.items(), *grads.items(), *optimizer.state.items()]:
        assert array.dtype == dtype, name
    logits, state = model.logits(np.zeros((3, 2), np.int64), model.initial_state(2))
    assert logits.dtype == dtype and state.dtype == dtype


def _workspace_arrays(model: CharRNN) -> dict:
    arrays = {}
    for i, ws in enumerate([*model.stack._train_ws, model._head_ws]):
        arrays.update({(i, name): id(a) for name, a in ws._arrays.items()})
    return arrays


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_step_reuses_its_buffers_and_allocates_little(cell: str) -> None:
    model, _, step = setup(cell)
    step()
    before = _workspace_arrays(model)
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert _workspace_arrays(model) == before  # same arrays, not re-allocated
    # Nothing the size of an activation is allocated; what remains is O(T*B) index and loss
    # vectors and numpy's fixed 8192-element iterator buffers for ufuncs on strided views.
    one_activation = T * B * H * 4  # bytes of one (T, B, H) float32 array
    assert peak < one_activation / 2, peak
