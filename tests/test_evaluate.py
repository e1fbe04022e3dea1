"""Evaluation (`charrnn.evaluate`): chunking is invisible, and prepared weights follow updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_model

from charrnn.evaluate import evaluate, evaluate_blocks
from charrnn.layers.loss import xent_sum


def test_eval_over_chunks_equals_one_pass_over_the_whole_text() -> None:
    """Carrying the state makes chunking invisible: any seq_len gives the same loss."""
    model = make_model("gru", V=7)
    ids = np.random.default_rng(0).integers(0, 7, 301)
    logits, _ = model.logits(ids[:-1, None], model.initial_state(1))
    expected = xent_sum(logits.reshape(7, -1).copy(), ids[1:]) / 300
    for seq_len in (1, 7, 64, 1000):
        result = evaluate(model, ids, seq_len=seq_len)
        assert result.chars == 300
        assert result.loss == pytest.approx(expected, rel=1e-12)
    assert result.bpc == pytest.approx(expected / math.log(2))
    assert result.perplexity == pytest.approx(math.exp(expected))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_evaluation_after_a_training_step_sees_the_updated_weights(cell: str) -> None:
    """Evaluation reuses its prepared weights only within one run: the next run re-prepares."""
    from charrnn.config import TrainConfig
    from charrnn.model import CharRNN
    from charrnn.optim import Optimizer

    model = make_model(cell, V=7, layers=2)
    ids = np.random.default_rng(0).integers(0, 7, 200)
    before = evaluate(model, ids, seq_len=16).loss
    x, y = ids[:16].reshape(4, 4), ids[1:17].reshape(4, 4)
    model.loss(x, y, model.initial_state(4))
    Optimizer(TrainConfig(lr=0.05).optimizer_settings(), model.params).step(model.params, model.backward(), 0.05)
    after = evaluate(model, ids, seq_len=16).loss
    fresh = CharRNN(model.shape, {k: v.copy() for k, v in model.params.items()})
    assert after != before
    assert after == evaluate(fresh, ids, seq_len=16).loss


def test_reusing_prepared_weights_gives_the_same_logits_as_preparing_them() -> None:
    model = make_model("lstm", V=7, layers=2)
    ids = np.random.default_rng(1).integers(0, 7, (5, 3))
    state = model.initial_state(3)
    fresh, _ = model.logits(ids, state)
    fresh = fresh.copy()
    reused, _ = model.logits(ids, state, reuse_weights=True)
    np.testing.assert_array_equal(reused, fresh)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_one_stream_takes_the_same_path_as_a_batch(cell: str) -> None:
    """A batch of one uses its own gather and projection (B = 1 fast paths); each column of a
    batch must come out the same as running that stream alone."""
    model = make_model(cell, V=7, layers=2)
    ids = np.random.default_rng(2).integers(0, 7, (9, 3))
    batch, batch_state = model.logits(ids, model.initial_state(3))
    batch, batch_state = batch.copy(), batch_state.copy()
    for b in range(3):
        alone, alone_state = model.logits(ids[:, b : b + 1], model.initial_state(1))
        np.testing.assert_allclose(alone[:, :, 0], batch[:, :, b], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(alone_state[..., 0, :], batch_state[..., b, :], rtol=1e-12, atol=1e-12)


def test_evaluating_blocks_as_they_come_equals_one_pass_over_the_whole_text() -> None:
    model = make_model("lstm", V=7)
    ids = np.random.default_rng(3).integers(0, 7, 500)
    whole = evaluate(model, ids, seq_len=64)
    for cuts in ([1, 2, 3], [250], [0, 0, 7, 7, 499], list(range(0, 500, 33))):
        blocks = np.split(ids, cuts)  # empty and one-id blocks included
        streamed = evaluate_blocks(model, blocks, seq_len=64)
        assert streamed.chars == whole.chars == 499
        assert streamed.loss == pytest.approx(whole.loss, rel=1e-12)
