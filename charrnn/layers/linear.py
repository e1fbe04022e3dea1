"""An affine map `x @ W + b` over all positions at once."""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, transposed


def forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """Inputs: x (..., D); W (D, G); b (G,). Returns: (..., G)."""
    out = scratch(ws, "out", (*x.shape[:-1], W.shape[1]), W.dtype)
    np.matmul(x.reshape(-1, x.shape[-1]), W, out=out.reshape(-1, W.shape[1]))
    out += b
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, ws: Workspace | None = None, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Inputs: dout (..., G); x (..., D) the forward input; W (D, G).
    Returns: dx (..., D) or None; dW (D, G); db (G,)."""
    D, G = W.shape
    x_2d, dout_2d = x.reshape(-1, D), dout.reshape(-1, G)
    dW = scratch(ws, "dW", (D, G), W.dtype)
    np.matmul(x_2d.T, dout_2d, out=dW)
    db = scratch(ws, "db", (G,), W.dtype)
    np.sum(dout_2d, axis=0, out=db)
    if not need_dx:
        return None, dW, db
    W_T = transposed(ws, "W_T", W)
    dx = scratch(ws, "dx", x.shape, W.dtype)
    np.matmul(dout_2d, W_T, out=dx.reshape(-1, D))
    return dx, dW, db
