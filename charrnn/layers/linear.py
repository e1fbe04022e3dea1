"""An affine map `W^T x + b` over all positions at once (layouts: see `charrnn.layers`)."""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch


def forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """Inputs: x (D, ...); W (D, G); b (G,). Returns: (G, ...)."""
    D, G = W.shape
    out = scratch(ws, "out", (G, *x.shape[1:]), W.dtype)
    out_2d = out.reshape(G, -1)
    np.matmul(W.T, x.reshape(D, -1), out=out_2d)
    out_2d += b[:, None]
    return out


def forward_steps(x: np.ndarray, W_T: np.ndarray, b: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """The input projection of a cell: x (D, T, B) feature-major; W_T (G, D) = W.T, contiguous
    (the per-step products run faster on it); b (G,).
    Returns: (T, G, B) step-major: one product per step written into its contiguous block, or,
    for one stream, one product over all steps ((T, G, 1) is (T, G) = x^T W)."""
    G, D = W_T.shape
    T, B = x.shape[1:]
    out = scratch(ws, "out_steps", (T, G, B), W_T.dtype)
    if B == 1:
        out_2d = out.reshape(T, G)
        np.matmul(x.reshape(D, T).T, W_T.T, out=out_2d)
        out_2d += b
        return out
    np.matmul(W_T, x.swapaxes(0, 1), out=out)
    bias = scratch(ws, "bias", (G, B), W_T.dtype)
    bias[:] = b[:, None]
    for t in range(T):  # while the block is in cache
        out[t] += bias
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs: dout (G, ...); x (D, ...) the forward input; W (D, G).
    Returns: dx (D, ...); dW (D, G); db (G,)."""
    D, G = W.shape
    x_2d, dout_2d = x.reshape(D, -1), dout.reshape(G, -1)
    dW = scratch(ws, "dW", (D, G), W.dtype)
    np.matmul(x_2d, dout_2d.T, out=dW)
    db = scratch(ws, "db", (G,), W.dtype)
    np.sum(dout_2d, axis=1, out=db)
    dx = scratch(ws, "dx", x.shape, W.dtype)
    np.matmul(W, dout_2d, out=dx.reshape(D, -1))
    return dx, dW, db
