"""The LSTM cell, unrolled over a chunk of T steps (contract and layout: see `charrnn.layers.rnn`).

Gates are stacked in PyTorch's order i, f, g, o, so `W_xh (D, 4H)`, `W_hh (H, 4H)` and
`b_h (4H,)` hold the blocks `[i | f | g | o]`, and a step's pre-activation `a (4H, B)` does too:

    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)     a = W_xh^T x_t + b_h + W_hh^T h_{t-1}
    g       = tanh(a_g)
    c_t     = f * c_{t-1} + i * g
    h_t     = o * tanh(c_t)

The state is `(2, H, B)`: `state[0]` is h, `state[1]` is c. A PyTorch `nn.LSTM` maps on by a
transpose: `W_xh = weight_ih_l{k}.T`, `W_hh = weight_hh_l{k}.T`, `b_h = bias_ih_l{k} + bias_hh_l{k}`.

All four gates are activated by one `exp` over the whole block: sigmoid(a) = 1 / (1 + exp(-a))
and tanh(a) = 2 sigmoid(2a) - 1. `prepare` copies the recurrent weights once with the factor
-1 (-2 for g) folded in, so the step needs no separate scaling pass; numpy's float32 `exp`
costs about half of its `tanh` on this project's machines.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, swap_leading

GATES = 4
STATE = 2  # h and c
RECURRENT_PARAMS = ("W_hh",)


def prepare(params: dict[str, np.ndarray], ws: Workspace | None = None) -> dict[str, np.ndarray]:
    """params {"W_hh": (H, 4H)} -> weights {"W_hh", "W_exp": (4H, H)}: W_exp = -W_hh^T with the
    g rows doubled, so W_exp @ h gives -a for i, f, o and -2a for g."""
    W_hh = params["W_hh"]
    H = W_hh.shape[0]
    W_exp = scratch(ws, "W_exp", (4 * H, H), W_hh.dtype)
    np.negative(W_hh.T, out=W_exp)
    W_exp[2 * H : 3 * H] *= 2
    return {"W_hh": W_hh, "W_exp": W_exp}


def forward(
    xw: np.ndarray, state0: np.ndarray, weights: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, 4H, B) projected inputs; state0 (2, H, B) = (h0, c0); weights from `prepare`.
    Returns: hs (H, T, B); stateT (2, H, B); cache for backward.
    """
    T, G, B = xw.shape
    H = G // 4
    dtype = xw.dtype
    W = weights["W_exp"]
    gates = scratch(ws, "gates", (T, G, B), dtype)  # activated [i | f | g | o] per step
    h = scratch(ws, "h", (T + 1, H, B), dtype)  # h[t + 1] = h_t
    c = scratch(ws, "c", (T + 1, H, B), dtype)
    tanh_c = scratch(ws, "tanh_c", (T, H, B), dtype)
    ig = scratch(ws, "ig", (H, B), dtype)
    h[0], c[0] = state0[0], state0[1]
    with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigmoid 0, as it should
        for t in range(T):
            a = gates[t]
            i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
            np.matmul(W, h[t], out=a)
            a -= xw[t]
            g -= xw[t, 2 * H : 3 * H]  # -2 a_g
            np.exp(a, out=a)
            a += 1
            np.reciprocal(a, out=a)  # sigmoid(a_i), sigmoid(a_f), sigmoid(2 a_g), sigmoid(a_o)
            g *= 2
            g -= 1  # tanh(a_g)
            np.multiply(f, c[t], out=c[t + 1])
            np.multiply(i, g, out=ig)
            c[t + 1] += ig
            np.tanh(c[t + 1], out=tanh_c[t])
            np.multiply(o, tanh_c[t], out=h[t + 1])
    stateT = scratch(ws, "stateT", (2, H, B), dtype)
    stateT[0], stateT[1] = h[T], c[T]
    h_seq = swap_leading(ws, "h_seq", h)
    return h_seq[:, 1:], stateT, (gates, c, tanh_c, h_seq, weights["W_hh"])


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (H, T, B) or None; dstateT (2, H, B) = (dh_T, dc_T) or None.
    Returns: dxw (4H, T, B); dstate0 (2, H, B); grads {"W_hh": (H, 4H)}.
    """
    gates, c, tanh_c, h_seq, W_hh = cache
    dhs = None if dhs is None else swap_leading(ws, "dhs", dhs)  # (T, H, B): one block per step
    T, G, B = gates.shape
    H = G // 4
    dtype = gates.dtype
    da = scratch(ws, "da", (G, T, B), dtype)
    da_t = scratch(ws, "da_t", (G, B), dtype)
    d_i, d_f, d_g, d_o = da_t[:H], da_t[H : 2 * H], da_t[2 * H : 3 * H], da_t[3 * H :]
    d_if = da_t[: 2 * H].reshape(2, H, B)
    tmp = scratch(ws, "tmp", (H, B), dtype)
    dstate = scratch(ws, "dstate", (2, H, B), dtype)
    dstate[:] = 0 if dstateT is None else dstateT
    dh, dc = dstate[0], dstate[1]
    for t in range(T - 1, -1, -1):
        a = gates[t]
        i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        if dhs is not None:
            dh += dhs[t]
        # da_o = dh tanh(c_t) o (1 - o)
        np.subtract(1, o, out=d_o)
        d_o *= o
        d_o *= tanh_c[t]
        d_o *= dh
        # dc_t += dh o (1 - tanh(c_t)^2)
        np.multiply(tanh_c[t], tanh_c[t], out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        dc += tmp
        # da_i = dc g i (1 - i), da_f = dc c_{t-1} f (1 - f)
        np.subtract(1, a[: 2 * H], out=da_t[: 2 * H])
        da_t[: 2 * H] *= a[: 2 * H]
        d_i *= g
        d_f *= c[t]
        d_if *= dc
        # da_g = dc i (1 - g^2)
        np.multiply(g, g, out=d_g)
        np.subtract(1, d_g, out=d_g)
        d_g *= i
        d_g *= dc
        dc *= f
        da[:, t] = da_t
        np.matmul(W_hh, da_t, out=dh)
    dW_hh = scratch(ws, "dW_hh", (H, G), dtype)
    np.matmul(h_seq[:, :T].reshape(H, T * B), da.reshape(G, T * B).T, out=dW_hh)
    return da, dstate, {"W_hh": dW_hh}
