"""The cells against the golden values of the cs231n RNN assignment (../shared/fixtures)."""

from __future__ import annotations

import numpy as np

from charrnn.layers import lstm, rnn


def lin(lo: float, hi: float, *shape: int) -> np.ndarray:
    return np.linspace(lo, hi, num=int(np.prod(shape))).reshape(shape)


def test_rnn_single_step() -> None:
    N, D, H = 3, 10, 4
    x, prev_h = lin(-0.4, 0.7, N, D), lin(-0.2, 0.5, N, H)
    Wx, Wh, b = lin(-0.1, 0.9, D, H), lin(-0.3, 0.7, H, H), lin(-0.2, 0.4, H)
    hs, _, _ = rnn.forward((x @ Wx + b).T[None], prev_h.T[None], rnn.prepare({"W_hh": Wh}))  # xw (T=1, H, N)
    np.testing.assert_allclose(hs[:, 0, 0], [-0.58172089, -0.50182032, -0.41232771, -0.31410098], atol=1e-8)
    np.testing.assert_allclose(hs[:, 0, -1], [0.97934501, 0.99144213, 0.99646691, 0.99854353], atol=1e-8)


def test_rnn_sequence() -> None:
    N, T, D, H = 2, 3, 4, 5
    x, h0 = lin(-0.1, 0.3, N, T, D), lin(-0.3, 0.1, N, H)
    Wx, Wh, b = lin(-0.2, 0.4, D, H), lin(-0.4, 0.1, H, H), lin(-0.7, 0.1, H)
    xw = (x @ Wx + b).transpose(1, 2, 0)  # batch-major (N, T, H) -> step-major (T, H, N)
    hs, _, _ = rnn.forward(xw, h0.T[None], rnn.prepare({"W_hh": Wh}))
    np.testing.assert_allclose(hs[:, 0, 0], [-0.42070749, -0.27279261, -0.11074945, 0.05740409, 0.22236251], atol=1e-8)
    np.testing.assert_allclose(hs[:, 2, 1], [-0.51014825, -0.30524429, -0.06755202, 0.17806392, 0.40333043], atol=1e-8)


def test_lstm_single_step() -> None:
    """The assignment stacks gates i, f, o, g; charrnn uses PyTorch's i, f, g, o: reorder blocks."""
    N, D, H = 3, 4, 5
    x, prev_h, prev_c = lin(-0.4, 1.2, N, D), lin(-0.3, 0.7, N, H), lin(-0.4, 0.9, N, H)
    Wx, Wh, b = lin(-2.1, 1.3, D, 4 * H), lin(-0.7, 2.2, H, 4 * H), lin(0.3, 0.7, 4 * H)
    order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 1, 3, 2)])
    Wx, Wh, b = Wx[:, order], Wh[:, order], b[order]
    hs, stateT, _ = lstm.forward((x @ Wx + b).T[None], np.stack([prev_h.T, prev_c.T]), lstm.prepare({"W_hh": Wh}))
    np.testing.assert_allclose(hs[:, 0, 0], [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904], atol=1e-8)
    np.testing.assert_allclose(stateT[1, :, 2], [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676], atol=1e-8)
