"""The GRU cell in PyTorch's formulation, unrolled over T steps (contract: see `charrnn.layers.rnn`).

Gates are stacked r, z, n along the last axis: `W_xh (D, 3H)`, `W_hh (H, 3H)`, `b_h (3H,)`.
The reset gate multiplies the recurrent term *after* its bias, as in `torch.nn.GRU`, so the
n block has a recurrent bias of its own, `b_hn (H,)`:

    r = sigmoid(a_r),  z = sigmoid(a_z)        a = x W_xh + b_h + h_{t-1} W_hh   (r, z blocks)
    n = tanh(x W_xn + b_n + r * (h_{t-1} W_hn + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

From a PyTorch `nn.GRU`: `W_xh = weight_ih_l{k}.T`, `W_hh = weight_hh_l{k}.T`,
`b_h = bias_ih_l{k} + [bias_hh_r, bias_hh_z, 0]`, `b_hn = bias_hh_n`.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, transposed

GATES = 3
STATE = 1
RECURRENT_PARAMS = ("W_hh", "b_hn")


def forward(
    xw: np.ndarray, state0: np.ndarray, params: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, B, 3H) projected inputs; state0 (1, B, H);
    params {"W_hh": (H, 3H), "b_hn": (H,)}.
    Returns: hs (T, B, H); stateT (1, B, H); cache for backward.
    """
    T, B, G = xw.shape
    H = G // 3
    dtype = xw.dtype
    W_hh, b_hn = params["W_hh"], params["b_hn"]
    gates = scratch(ws, "gates", (T, B, G), dtype)  # activated [r | z | n]
    hn = scratch(ws, "hn", (T, B, H), dtype)  # h_{t-1} W_hn + b_hn
    h = scratch(ws, "h", (T + 1, B, H), dtype)
    hw = scratch(ws, "hw", (B, G), dtype)
    h[0] = state0[0]
    for t in range(T):
        np.matmul(h[t], W_hh, out=hw)
        rz, n = gates[t, :, : 2 * H], gates[t, :, 2 * H :]
        np.add(xw[t, :, : 2 * H], hw[:, : 2 * H], out=rz)
        rz *= 0.5  # sigmoid(a) = 0.5 tanh(0.5 a) + 0.5
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        np.add(hw[:, 2 * H :], b_hn, out=hn[t])
        np.multiply(rz[:, :H], hn[t], out=n)
        n += xw[t, :, 2 * H :]
        np.tanh(n, out=n)
        np.subtract(h[t], n, out=h[t + 1])
        h[t + 1] *= rz[:, H:]
        h[t + 1] += n
    return h[1:], h[T:], (gates, hn, h, W_hh)


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (T, B, H) or None; dstateT (1, B, H) or None.
    Returns: dxw (T, B, 3H); dstate0 (1, B, H); grads {"W_hh": (H, 3H), "b_hn": (H,)}.
    """
    gates, hn, h, W_hh = cache
    T, B, G = gates.shape
    H = G // 3
    dtype = gates.dtype
    r, z, n = gates[:, :, :H], gates[:, :, H : 2 * H], gates[:, :, 2 * H :]
    # d(h W_hh + [0, 0, b_hn]) per step, [dr | dz | dhn]; first filled with the factors that do
    # not depend on the incoming gradient: da_r = da_n * hn r(1-r), da_z = dh (h_{t-1} - n) z(1-z).
    dhw = scratch(ws, "dhw", (T, B, G), dtype)
    tmp = scratch(ws, "tmp", (T, B, H), dtype)
    np.subtract(1, r, out=tmp)
    np.multiply(r, tmp, out=dhw[:, :, :H])
    dhw[:, :, :H] *= hn
    np.subtract(1, z, out=tmp)
    np.multiply(z, tmp, out=dhw[:, :, H : 2 * H])
    np.subtract(h[:-1], n, out=tmp)
    dhw[:, :, H : 2 * H] *= tmp
    dan = scratch(ws, "dan", (T, B, H), dtype)  # gradient on n's pre-activation; first (1-z)(1-n^2)
    np.multiply(n, n, out=dan)
    np.subtract(1, dan, out=dan)
    np.subtract(1, z, out=tmp)
    dan *= tmp

    W_hh_T = transposed(ws, "W_hh_T", W_hh)
    dh = scratch(ws, "dh", (1, B, H), dtype)
    dh[:] = 0 if dstateT is None else dstateT
    dh_direct = scratch(ws, "dh_direct", (B, H), dtype)
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh[0] += dhs[t]
        dan[t] *= dh[0]
        dhw[t, :, :H] *= dan[t]
        dhw[t, :, H : 2 * H] *= dh[0]
        np.multiply(dan[t], r[t], out=dhw[t, :, 2 * H :])
        np.multiply(dh[0], z[t], out=dh_direct)
        np.matmul(dhw[t], W_hh_T, out=dh[0])
        dh[0] += dh_direct
    dW_hh = scratch(ws, "dW_hh", (H, G), dtype)
    np.matmul(h[:-1].reshape(T * B, H).T, dhw.reshape(T * B, G), out=dW_hh)
    db_hn = scratch(ws, "db_hn", (H,), dtype)
    np.sum(dhw[:, :, 2 * H :], axis=(0, 1), out=db_hn)
    dhw[:, :, 2 * H :] = dan  # the r and z blocks of dxw equal those of dhw; the n block is da_n
    return dhw, dh, {"W_hh": dW_hh, "b_hn": db_hn}
