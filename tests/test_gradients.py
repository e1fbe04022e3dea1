"""Every backward pass against float64 central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from gradcheck import numeric_grad, rel_error

from charrnn.layers import CELLS, embedding, linear, loss

TOL = 1e-6


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cell_backward_matches_finite_differences(cell: str) -> None:
    mod = CELLS[cell]
    rng = np.random.default_rng(1)
    T, B, H = 4, 3, 5
    xw = rng.normal(size=(T, mod.GATES * H, B))  # step-major in, feature-major out
    state0 = rng.normal(size=(mod.STATE, H, B))
    params = {"W_hh": rng.normal(size=(H, mod.GATES * H))}
    if "b_hn" in mod.RECURRENT_PARAMS:
        params["b_hn"] = rng.normal(size=H)
    dhs = rng.normal(size=(H, T, B))
    dstateT = rng.normal(size=(mod.STATE, H, B))

    def f() -> float:
        hs, stateT, _ = mod.forward(xw, state0, mod.prepare(params))
        return float(np.sum(hs * dhs) + np.sum(stateT * dstateT))

    _, _, cache = mod.forward(xw, state0, mod.prepare(params))
    dxw, dstate0, grads = mod.backward(dhs, cache, dstateT)
    assert rel_error(dxw.swapaxes(0, 1), numeric_grad(f, xw)) < TOL
    assert rel_error(dstate0, numeric_grad(f, state0)) < TOL
    for name, p in params.items():
        assert rel_error(grads[name], numeric_grad(f, p)) < TOL, name


REGULARISERS = {
    "none": {},
    "dropout": {"dropout": 0.4},
    "output dropout": {"output_dropout": 0.3},
    "locked dropout": {"dropout": 0.4, "output_dropout": 0.3, "locked_dropout": True},
    "DropConnect": {"weight_drop": 0.5},
    "all": {"dropout": 0.4, "output_dropout": 0.3, "locked_dropout": True, "weight_drop": 0.5},
}


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("regularisers", REGULARISERS.values(), ids=REGULARISERS.keys())
def test_model_gradients_for_every_parameter_and_initial_state(cell: str, regularisers: dict) -> None:
    """Two stacked layers; the masks are fixed by re-seeding their generator."""
    model = make_model(cell, layers=2, **regularisers)
    rng = np.random.default_rng(2)
    T, B = 4, 3
    ids, targets = rng.integers(0, 7, (T, B)), rng.integers(0, 7, (T, B))
    state0 = rng.normal(size=model.shape.state_shape(B))
    dstateT = rng.normal(size=model.shape.state_shape(B))  # as if a later chunk sent gradient back

    def f() -> float:
        mask_rng = np.random.default_rng(5) if regularisers else None
        value, stateT = model.loss(ids, targets, state0, mask_rng)
        return value + float(np.sum(stateT * dstateT))

    f()
    grads = {k: v.copy() for k, v in model.backward(dstateT).items()}
    dstate0 = model.dstate0.copy()
    assert set(grads) == set(model.params)
    for name, p in model.params.items():
        assert rel_error(grads[name], numeric_grad(f, p)) < TOL, name
    assert rel_error(dstate0, numeric_grad(f, state0)) < TOL


@pytest.mark.parametrize("locked", [False, True])
def test_locked_dropout_keeps_one_mask_over_the_chunk_s_steps(locked: bool) -> None:
    """What the read-out sees: with locked dropout a unit of a stream is dropped at every step
    of the chunk or at none; per-element masks differ from step to step."""
    model = make_model("gru", layers=2, H=40, output_dropout=0.5, locked_dropout=locked)
    ids = np.random.default_rng(3).integers(0, 7, (30, 4))
    model.loss(ids, ids, model.initial_state(4), np.random.default_rng(0))
    dropped = model._cache[0] == 0  # (H, T, B): the top layer's output after dropout
    assert 0.3 < dropped.mean() < 0.7
    constant_over_time = (dropped.all(axis=1) | ~dropped.any(axis=1)).all()
    assert constant_over_time == locked


def test_drop_connect_masks_w_hh_for_the_chunk_and_only_in_training() -> None:
    """The recurrence a chunk trains with is W_hh * M (M of 0 and 2 at p = 0.5): dropping every
    weight the mask zeroes from the parameters leaves that chunk's loss unchanged."""
    model = make_model("rnn", layers=1, weight_drop=0.5)
    ids = np.random.default_rng(3).integers(0, 7, (6, 2))
    state = model.initial_state(2)
    loss, _ = model.loss(ids, ids, state, np.random.default_rng(9))
    mask = model.stack._weight_masks[0].copy()
    assert set(np.unique(mask)) == {0.0, 2.0}
    plain, _ = model.loss(ids, ids, state)
    assert plain != loss
    model.params["layers.0.W_hh"] *= mask
    again, _ = model.loss(ids, ids, state)
    assert again == pytest.approx(loss, rel=1e-12)


def test_dropout_changes_the_loss_only_in_training() -> None:
    model = make_model("lstm", layers=2, dropout=0.5)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, 7, (4, 3)), rng.integers(0, 7, (4, 3))
    state = model.initial_state(3)
    plain, _ = model.loss(ids, targets, state)
    dropped, _ = model.loss(ids, targets, state, np.random.default_rng(0))
    assert plain != dropped
    logits_a, _ = model.logits(ids, state)
    logits_a = logits_a.copy()
    logits_b, _ = model.logits(ids, state)
    np.testing.assert_array_equal(logits_a, logits_b)


@pytest.mark.parametrize(
    "ids",
    [np.array([[0, 5], [2, 2], [4, 1]]), np.array([[3, -1], [-1, -1], [0, 5]]), np.array([[1], [-1], [4]])],
    ids=["batch", "no-input positions", "one stream"],
)
def test_embedding_backward(ids: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    W, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    dout = rng.normal(size=(4, *ids.shape))  # feature-major (G, T, B); forward returns step-major (T, G, B)
    dW, db = embedding.backward(dout, ids, 6)
    f = lambda: float(np.sum(embedding.forward(ids, embedding.table(W, b)) * dout.swapaxes(0, 1)))  # noqa: E731
    assert rel_error(dW, numeric_grad(f, W)) < TOL and rel_error(db, numeric_grad(f, b)) < TOL


@pytest.mark.parametrize("B", [1, 3])
def test_projection_into_steps_equals_the_feature_major_projection(B: int) -> None:
    rng = np.random.default_rng(6)
    x, W, b = rng.normal(size=(4, 5, B)), rng.normal(size=(4, 6)), rng.normal(size=6)
    steps = linear.forward_steps(x, np.ascontiguousarray(W.T), b)
    np.testing.assert_allclose(steps, linear.forward(x, W, b).swapaxes(0, 1), rtol=1e-13)


def test_linear_and_softmax_backward() -> None:
    rng = np.random.default_rng(4)
    x, W2, b2 = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 5)), rng.normal(size=5)
    dout2 = rng.normal(size=(5, 3, 2))
    dx, dW2, db2 = linear.backward(dout2, x, W2)
    g = lambda: float(np.sum(linear.forward(x, W2, b2) * dout2))  # noqa: E731
    for analytic, p in ((dx, x), (dW2, W2), (db2, b2)):
        assert rel_error(analytic, numeric_grad(g, p)) < TOL

    logits, targets = rng.normal(size=(5, 6)), rng.integers(0, 5, 6)  # (V, N)
    _, dlogits = loss.softmax_xent(logits.copy(), targets)
    h = lambda: loss.softmax_xent(logits.copy(), targets)[0]  # noqa: E731
    assert rel_error(dlogits, numeric_grad(h, logits)) < TOL


def test_softmax_loss_of_near_uniform_scores_is_log_v() -> None:
    """The cs231n sanity check: tiny random scores over V = 10 classes give about ln(10)."""
    rng = np.random.default_rng(0)
    value, _ = loss.softmax_xent(0.001 * rng.normal(size=(10, 5000)), rng.integers(0, 10, 5000))
    assert abs(value - np.log(10)) < 1e-2
