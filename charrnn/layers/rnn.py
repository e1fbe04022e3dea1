"""The vanilla tanh cell of the lecture, unrolled over a chunk of T steps.

    h_t = tanh(x_t W_xh + b_h + h_{t-1} W_hh)

Every cell module shares one contract. The input projection `x_t W_xh + b_h` is not part of
the cell: the model computes it for all T steps at once (a row gather for one-hot inputs, one
GEMM otherwise) and hands it in as `xw`; the cell does only what must be sequential.

    forward(xw, state0, params, ws) -> (hs, stateT, cache)
    backward(dhs, cache, dstateT, ws) -> (dxw, dstate0, grads)

Shapes: `xw (T, B, GATES*H)`, `state0`/`stateT` `(STATE, B, H)`, `hs (T, B, H)`. `params` holds
the recurrent weights (here `W_hh (H, H)`). Returned arrays may live in the workspace `ws`.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, transposed

GATES = 1
STATE = 1  # the hidden state h only
RECURRENT_PARAMS = ("W_hh",)


def forward(
    xw: np.ndarray, state0: np.ndarray, params: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, B, H) projected inputs; state0 (1, B, H); params {"W_hh": (H, H)}.
    Returns: hs (T, B, H) hidden states; stateT (1, B, H) the last state; cache for backward.
    """
    T, B, H = xw.shape
    W_hh = params["W_hh"]
    h = scratch(ws, "h", (T + 1, B, H), xw.dtype)  # h[0] = h0, h[t + 1] = h_t
    h[0] = state0[0]
    for t in range(T):
        np.matmul(h[t], W_hh, out=h[t + 1])
        h[t + 1] += xw[t]
        np.tanh(h[t + 1], out=h[t + 1])
    return h[1:], h[T:], (h, W_hh)


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (T, B, H) loss gradient on each h_t (None: zero); dstateT (1, B, H) gradient on
    the last state from beyond the chunk (None: zero).
    Returns: dxw (T, B, H); dstate0 (1, B, H); grads {"W_hh": (H, H)}.
    """
    h, W_hh = cache
    T, B, H = h.shape[0] - 1, h.shape[1], h.shape[2]
    da = scratch(ws, "da", (T, B, H), h.dtype)
    np.multiply(h[1:], h[1:], out=da)
    np.subtract(1, da, out=da)  # tanh'(a_t) = 1 - h_t^2, then multiplied by dh_t in the loop
    W_hh_T = transposed(ws, "W_hh_T", W_hh)
    dh = scratch(ws, "dh", (1, B, H), h.dtype)
    dh[:] = 0 if dstateT is None else dstateT
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh[0] += dhs[t]
        da[t] *= dh[0]
        np.matmul(da[t], W_hh_T, out=dh[0])
    dW_hh = scratch(ws, "dW_hh", (H, H), h.dtype)
    np.matmul(h[:-1].reshape(T * B, H).T, da.reshape(T * B, H), out=dW_hh)
    return da, dh, {"W_hh": dW_hh}
