"""The GRU cell in PyTorch's formulation, unrolled over T steps (contract and layout: see
`charrnn.layers.rnn`).

Gates are stacked r, z, n: `W_xh (D, 3H)`, `W_hh (H, 3H)`, `b_h (3H,)`. The reset gate
multiplies the recurrent term *after* its bias, as in `torch.nn.GRU`, so the n block has a
recurrent bias of its own, `b_hn (H,)`:

    r = sigmoid(a_r),  z = sigmoid(a_z)        a = W_xh^T x_t + b_h + W_hh^T h_{t-1}   (r, z blocks)
    n = tanh(W_xn^T x_t + b_n + r * (W_hn^T h_{t-1} + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

From a PyTorch `nn.GRU`: `W_xh = weight_ih_l{k}.T`, `W_hh = weight_hh_l{k}.T`,
`b_h = bias_ih_l{k} + [bias_hh_r, bias_hh_z, 0]`, `b_hn = bias_hh_n`.

r and z are activated by one `exp` (sigmoid(a) = 1 / (1 + exp(-a))); `prepare` negates their
recurrent weights once, so the step needs no scaling pass.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, swap_leading

GATES = 3
STATE = 1
RECURRENT_PARAMS = ("W_hh", "b_hn")


def prepare(params: dict[str, np.ndarray], ws: Workspace | None = None) -> dict[str, np.ndarray]:
    """params {"W_hh": (H, 3H), "b_hn": (H,)} -> weights {"W_hh", "b_hn", "W_exp": (3H, H)}:
    W_exp = W_hh^T with the r and z rows negated."""
    W_hh = params["W_hh"]
    H = W_hh.shape[0]
    W_exp = scratch(ws, "W_exp", (3 * H, H), W_hh.dtype)
    np.copyto(W_exp, W_hh.T)
    np.negative(W_exp[: 2 * H], out=W_exp[: 2 * H])
    return {"W_hh": W_hh, "b_hn": params["b_hn"], "W_exp": W_exp}


def forward(
    xw: np.ndarray, state0: np.ndarray, weights: dict[str, np.ndarray], ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Run the cell over T steps.

    Inputs: xw (T, 3H, B) projected inputs; state0 (1, H, B); weights from `prepare`.
    Returns: hs (H, T, B); stateT (1, H, B); cache for backward.
    """
    T, G, B = xw.shape
    H = G // 3
    dtype = xw.dtype
    W = weights["W_exp"]
    b_hn = scratch(ws, "b_hn", (H, B), dtype)
    b_hn[:] = weights["b_hn"][:, None]
    gates = scratch(ws, "gates", (T, G, B), dtype)  # activated [r | z | n] per step
    hn = scratch(ws, "hn", (T, H, B), dtype)  # W_hn^T h_{t-1} + b_hn
    h = scratch(ws, "h", (T + 1, H, B), dtype)
    hw = scratch(ws, "hw", (G, B), dtype)
    h[0] = state0[0]
    with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigmoid 0, as it should
        for t in range(T):
            rz, r, z, n = gates[t, : 2 * H], gates[t, :H], gates[t, H : 2 * H], gates[t, 2 * H :]
            np.matmul(W, h[t], out=hw)
            np.subtract(hw[: 2 * H], xw[t, : 2 * H], out=rz)  # -a_r, -a_z
            np.exp(rz, out=rz)
            rz += 1
            np.reciprocal(rz, out=rz)
            np.add(hw[2 * H :], b_hn, out=hn[t])
            np.multiply(r, hn[t], out=n)
            n += xw[t, 2 * H :]
            np.tanh(n, out=n)
            np.subtract(h[t], n, out=h[t + 1])
            h[t + 1] *= z
            h[t + 1] += n
    h_seq = swap_leading(ws, "h_seq", h)
    return h_seq[:, 1:], h[T:], (gates, hn, h, h_seq, weights["W_hh"])


def backward(
    dhs: np.ndarray | None, cache: tuple, dstateT: np.ndarray | None = None, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Backprop through time.

    Inputs: dhs (H, T, B) or None; dstateT (1, H, B) or None.
    Returns: dxw (3H, T, B); dstate0 (1, H, B); grads {"W_hh": (H, 3H), "b_hn": (H,)}.
    """
    gates, hn, h, h_seq, W_hh = cache
    dhs = None if dhs is None else swap_leading(ws, "dhs", dhs)  # (T, H, B): one block per step
    T, G, B = gates.shape
    H = G // 3
    dtype = gates.dtype
    dhw = scratch(ws, "dhw", (G, T, B), dtype)  # d(W_hh^T h_{t-1} + [0, 0, b_hn]): [dr | dz | dhn]
    dan = scratch(ws, "dan", (H, T, B), dtype)  # gradient on n's pre-activation
    dhw_t = scratch(ws, "dhw_t", (G, B), dtype)
    d_r, d_z, d_hn = dhw_t[:H], dhw_t[H : 2 * H], dhw_t[2 * H :]
    dan_t = scratch(ws, "dan_t", (H, B), dtype)
    tmp = scratch(ws, "tmp", (H, B), dtype)
    dh_direct = scratch(ws, "dh_direct", (H, B), dtype)
    dh = scratch(ws, "dh", (1, H, B), dtype)
    dh[:] = 0 if dstateT is None else dstateT
    for t in range(T - 1, -1, -1):
        r, z, n = gates[t, :H], gates[t, H : 2 * H], gates[t, 2 * H :]
        if dhs is not None:
            dh[0] += dhs[t]
        # da_n = dh (1 - z) (1 - n^2)
        np.multiply(n, n, out=dan_t)
        np.subtract(1, dan_t, out=dan_t)
        np.subtract(1, z, out=tmp)
        dan_t *= tmp
        dan_t *= dh[0]
        # da_r = da_n hn r (1 - r)
        np.subtract(1, r, out=d_r)
        d_r *= r
        d_r *= hn[t]
        d_r *= dan_t
        # da_z = dh (h_{t-1} - n) z (1 - z)
        np.subtract(1, z, out=d_z)
        d_z *= z
        np.subtract(h[t], n, out=tmp)
        d_z *= tmp
        d_z *= dh[0]
        np.multiply(dan_t, r, out=d_hn)
        np.multiply(dh[0], z, out=dh_direct)
        dhw[:, t] = dhw_t
        dan[:, t] = dan_t
        np.matmul(W_hh, dhw_t, out=dh[0])
        dh[0] += dh_direct
    dW_hh = scratch(ws, "dW_hh", (H, G), dtype)
    np.matmul(h_seq[:, :T].reshape(H, T * B), dhw.reshape(G, T * B).T, out=dW_hh)
    db_hn = scratch(ws, "db_hn", (H,), dtype)
    np.sum(dhw[2 * H :].reshape(H, T * B), axis=1, out=db_hn)
    dhw[2 * H :] = dan  # the r and z blocks of dxw equal those of dhw; the n block is da_n
    return dhw, dh, {"W_hh": dW_hh, "b_hn": db_hn}
