"""The LSTM cell, unrolled over a chunk of T steps (contract: see `charrnn.layers.rnn`).

Gates are stacked in PyTorch's order i, f, g, o along the last axis, so `W_xh (D, 4H)`,
`W_hh (H, 4H)` and `b_h (4H,)` hold the blocks `[i | f | g | o]`:

    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)     a = x W_xh + b_h + h_{t-1} W_hh
    g       = tanh(a_g)
    c_t     = f * c_{t-1} + i * g
    h_t     = o * tanh(c_t)

The state is `(2, B, H)`: `state[0]` is h, `state[1]` is c. A PyTorch `nn.LSTM` maps on by a
transpose: `W_xh = weight_ih_l{k}.T`, `W_hh = weight_hh_l{k}.T`, `b_h = bias_ih_l{k} + bias_hh_l{k}`.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, transposed

GATES = 4
STATE = 2  # h and c
RECURRENT_PARAMS = ("W_hh",)


def _gate_scale(H: int, dtype: np.dtype) -> np.ndarray:
    """(4H,) 0.5 on the sigmoid gates, 1 on g: sigmoid(a) = 0.5 * tanh(0.5 a) + 0.5, so one
    tanh over all four blocks, scaled before and after, activates every gate at once."""
    scale = np.full(4 * H, 0.5, dtype)
    scale[2 * H : 3 * H] = 1
    return scale


def forward(
    xw: np.ndarray, state0: np.ndarray, params: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, B, 4H) projected inputs; state0 (2, B, H) = (h0, c0); params {"W_hh": (H, 4H)}.
    Returns: hs (T, B, H); stateT (2, B, H); cache for backward.
    """
    T, B, G = xw.shape
    H = G // 4
    dtype = xw.dtype
    scale = _gate_scale(H, dtype)
    shift = 1 - scale  # 0.5 on the sigmoid gates, 0 on g
    gates = scratch(ws, "gates", (T, B, G), dtype)  # activated [i | f | g | o]
    h = scratch(ws, "h", (T + 1, B, H), dtype)  # h[t + 1] = h_t
    c = scratch(ws, "c", (T + 1, B, H), dtype)
    tanh_c = scratch(ws, "tanh_c", (T, B, H), dtype)
    ig = scratch(ws, "ig", (B, H), dtype)
    W_hh = params["W_hh"]
    h[0], c[0] = state0[0], state0[1]
    for t in range(T):
        a = gates[t]
        np.matmul(h[t], W_hh, out=a)
        a += xw[t]
        a *= scale
        np.tanh(a, out=a)
        a *= scale
        a += shift
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        np.multiply(f, c[t], out=c[t + 1])
        np.multiply(i, g, out=ig)
        c[t + 1] += ig
        np.tanh(c[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=h[t + 1])
    stateT = scratch(ws, "stateT", (2, B, H), dtype)
    stateT[0], stateT[1] = h[T], c[T]
    return h[1:], stateT, (gates, h, c, tanh_c, params["W_hh"])


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (T, B, H) or None; dstateT (2, B, H) = (dh_T, dc_T) or None.
    Returns: dxw (T, B, 4H); dstate0 (2, B, H); grads {"W_hh": (H, 4H)}.
    """
    gates, h, c, tanh_c, W_hh = cache
    T, B, G = gates.shape
    H = G // 4
    dtype = gates.dtype
    i, f, g, o = (gates[:, :, k * H : (k + 1) * H] for k in range(4))
    # Everything that does not depend on the incoming gradient, for all T at once:
    # da_i = dc * g i(1-i), da_f = dc * c_{t-1} f(1-f), da_g = dc * i (1-g^2), da_o = dh * tanh(c) o(1-o),
    # and dc_t gets dh_t * o (1 - tanh(c_t)^2).
    da = scratch(ws, "da", (T, B, G), dtype)
    tmp = scratch(ws, "tmp", (T, B, H), dtype)
    for k, gate, factor in ((0, i, g), (1, f, c[:-1]), (3, o, tanh_c)):
        block = da[:, :, k * H : (k + 1) * H]
        np.subtract(1, gate, out=tmp)
        np.multiply(gate, tmp, out=block)
        block *= factor
    np.multiply(g, g, out=tmp)
    np.subtract(1, tmp, out=tmp)
    np.multiply(i, tmp, out=da[:, :, 2 * H : 3 * H])
    dc_from_h = scratch(ws, "dc_from_h", (T, B, H), dtype)
    np.multiply(tanh_c, tanh_c, out=dc_from_h)
    np.subtract(1, dc_from_h, out=dc_from_h)
    dc_from_h *= o

    W_hh_T = transposed(ws, "W_hh_T", W_hh)
    dstate = scratch(ws, "dstate", (2, B, H), dtype)
    dstate[:] = 0 if dstateT is None else dstateT
    dh, dc = dstate[0], dstate[1]
    dh_c = scratch(ws, "dh_c", (B, H), dtype)
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh += dhs[t]
        np.multiply(dh, dc_from_h[t], out=dh_c)
        dc += dh_c
        ifg = da[t, :, : 3 * H].reshape(B, 3, H)
        ifg *= dc[:, None, :]
        da[t, :, 3 * H :] *= dh
        dc *= f[t]
        np.matmul(da[t], W_hh_T, out=dh)
    dW_hh = scratch(ws, "dW_hh", (H, G), dtype)
    np.matmul(h[:-1].reshape(T * B, H).T, da.reshape(T * B, G), out=dW_hh)
    return da, dstate, {"W_hh": dW_hh}
