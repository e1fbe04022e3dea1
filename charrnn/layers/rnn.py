"""The vanilla tanh cell of the lecture, unrolled over a chunk of T steps.

    h_t = tanh(W_xh^T x_t + b_h + W_hh^T h_{t-1})

Every cell module shares one contract:

    prepare(params, ws) -> weights
    forward(xw, state0, weights, ws) -> (hs, stateT, cache)
    backward(dhs, cache, dstateT, ws) -> (dxw, dstate0, grads)

The input projection `W_xh^T x_t + b_h` is not part of the cell: the model computes it for all
T steps at once (a column gather for one-hot inputs, one product per step otherwise) and hands
it in as `xw`; the cell does only what must be sequential. Shapes (see `charrnn.layers` for the
two layouts): `xw (T, G*H, B)` step-major, since the loop reads it one step at a time;
`hs`, `dhs` `(H, T, B)` and `dxw` `(G*H, T, B)` feature-major, since weight gradients are
GEMMs over all T*B columns; `state0`, `stateT`, `dstate0` `(STATE, H, B)`. `params` holds the
recurrent weights (here `W_hh (H, H)`: the checkpoint's layout, PyTorch's `weight_hh.T`);
`prepare` turns them into the forms the loop multiplies by (a transposed copy, here), once per
set of weights: once per training chunk, once per evaluation or generation run. Returned
arrays may live in the workspace `ws`.

Inside the loop each step works on contiguous `(F, B)` blocks, and its one product is
`W^T (G*H, H) @ h (H, B)`, the orientation in which OpenBLAS runs small batches fastest.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, swap_leading, transposed

GATES = 1
STATE = 1  # the hidden state h only
RECURRENT_PARAMS = ("W_hh",)


def prepare(params: dict[str, np.ndarray], ws: Workspace | None = None) -> dict[str, np.ndarray]:
    """params {"W_hh": (H, H)} -> weights {"W_hh": (H, H), "W_hh_T": (H, H) contiguous}."""
    return {"W_hh": params["W_hh"], "W_hh_T": transposed(ws, "W_hh_T", params["W_hh"])}


def forward(
    xw: np.ndarray, state0: np.ndarray, weights: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, H, B) projected inputs; state0 (1, H, B); weights from `prepare`.
    Returns: hs (H, T, B) hidden states; stateT (1, H, B) the last state; cache for backward.
    """
    T, H, B = xw.shape
    W_hh_T = weights["W_hh_T"]
    h = scratch(ws, "h", (T + 1, H, B), xw.dtype)  # h[0] = h0, h[t + 1] = h_t
    h[0] = state0[0]
    for t in range(T):
        np.matmul(W_hh_T, h[t], out=h[t + 1])
        h[t + 1] += xw[t]
        np.tanh(h[t + 1], out=h[t + 1])
    h_seq = swap_leading(ws, "h_seq", h)  # (H, T + 1, B)
    return h_seq[:, 1:], h[T:], (h, h_seq, weights["W_hh"])


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (H, T, B) loss gradient on each h_t (None: zero); dstateT (1, H, B) gradient on
    the last state from beyond the chunk (None: zero).
    Returns: dxw (H, T, B); dstate0 (1, H, B); grads {"W_hh": (H, H)}.
    """
    h, h_seq, W_hh = cache
    T, H, B = h.shape[0] - 1, h.shape[1], h.shape[2]
    dhs = None if dhs is None else swap_leading(ws, "dhs", dhs)  # (T, H, B): one block per step
    da_steps = scratch(ws, "da_steps", (T, H, B), h.dtype)
    np.multiply(h[1:], h[1:], out=da_steps)
    np.subtract(1, da_steps, out=da_steps)  # tanh'(a_t) = 1 - h_t^2, then times dh_t in the loop
    dh = scratch(ws, "dh", (1, H, B), h.dtype)
    dh[:] = 0 if dstateT is None else dstateT
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh[0] += dhs[t]
        da_steps[t] *= dh[0]
        np.matmul(W_hh, da_steps[t], out=dh[0])
    da = swap_leading(ws, "da", da_steps)  # (H, T, B)
    dW_hh = scratch(ws, "dW_hh", (H, H), h.dtype)
    np.matmul(h_seq[:, :T].reshape(H, T * B), da.reshape(H, T * B).T, out=dW_hh)
    return da, dh, {"W_hh": dW_hh}
