"""The four graphs of the lecture: float64 gradient checks of every parameter and initial state."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from charrnn.graphs import EncoderDecoder, ManyToMany, ManyToOne, OneToMany

TOL = 1e-6
T, B, V, C = 5, 3, 6, 4


def scaled(graph):
    for p in graph.params.values():
        p *= 3  # exercise the nonlinearities
    return graph


def case(kind: str, cell: str):
    rng = np.random.default_rng(0)
    kw = {"cell": cell, "hidden_size": 4, "num_layers": 2, "dtype": np.float64}
    ids = rng.integers(0, V, (T, B))
    if kind == "many_to_many":
        return scaled(ManyToMany(V, C, **kw)), (ids, rng.integers(0, C, (T, B)))
    if kind == "many_to_one":
        return scaled(ManyToOne(V, C, **kw)), (ids, rng.integers(0, C, B))
    if kind == "one_to_many":
        return scaled(OneToMany(V, C, **kw)), (rng.integers(0, V, B), rng.integers(0, C, (T, B)))
    return scaled(EncoderDecoder(V, C, **kw)), (ids, rng.integers(0, C, (T - 2, B)))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("kind", ["many_to_many", "many_to_one", "one_to_many", "encoder_decoder"])
def test_every_graph_gradient_matches_finite_differences(kind: str, cell: str) -> None:
    graph, batch = case(kind, cell)
    stack = graph.encoder if kind == "encoder_decoder" else graph.stack
    state0 = np.random.default_rng(1).normal(size=stack.shape.state_shape(B)) * 0.5

    def f() -> float:
        return graph.loss(*batch, state0)

    f()
    grads = {k: v.copy() for k, v in graph.backward().items()}
    assert set(grads) == set(graph.params)
    for name, p in graph.params.items():
        assert rel_error(grads[name], numeric_grad(f, p)) < TOL, name
    assert rel_error(graph.dstate0, numeric_grad(f, state0)) < TOL


def test_encoder_learns_only_through_the_decoders_initial_state() -> None:
    """Encoder weights get gradient; cut the state hand-off and they would get none."""
    graph, (source, targets) = case("encoder_decoder", "lstm")
    graph.loss(source, targets)
    grads = graph.backward()
    encoder = [name for name in grads if name.startswith("encoder.")]
    assert encoder and all(np.abs(grads[name]).sum() > 0 for name in encoder)
    assert not any(name.startswith("encoder.") for name in ("W_hy", "b_y"))


def test_one_to_many_gets_no_input_after_the_first_step() -> None:
    graph = OneToMany(V, C, hidden_size=4, dtype=np.float64)
    first = np.array([1, 2, 3])
    a = graph.predict(first, 6)
    graph.params["layers.0.W_xh"][4:] += 100.0  # rows of ids never given: no effect
    np.testing.assert_array_equal(graph.predict(first, 6), a)
