"""One-hot input times a weight matrix, done as a row gather.

A one-hot `x_t` (B, V) times `W (V, G)` selects rows of W, so the forward pass is `W[ids]`
and the weight gradient is `onehot(ids)^T @ dout`, one GEMM over all T*B positions.
An id < 0 stands for no input: a zero vector, so that position gets only the bias.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch


def forward(ids: np.ndarray, W: np.ndarray, b: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """Inputs: ids (T, B) ints < V; W (V, G); b (G,). Returns: (T, B, G) = W[ids] + b."""
    out = scratch(ws, "xw", (*ids.shape, W.shape[1]), W.dtype)
    np.take(W, ids, axis=0, out=out, mode="clip")  # mode="raise" would buffer the output; ids < V by contract
    if ids.size and ids.min() < 0:
        out[ids < 0] = 0
    out += b
    return out


def backward(
    dout: np.ndarray, ids: np.ndarray, vocab_size: int, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs: dout (T, B, G); ids (T, B). Returns: dW (V, G), db (G,)."""
    G = dout.shape[-1]
    flat_ids = ids.reshape(-1)
    n = flat_ids.size
    onehot_T = scratch(ws, "onehot_T", (vocab_size, n), dout.dtype)  # (V, T*B)
    onehot_T.fill(0)
    positions = np.arange(n)
    if n and flat_ids.min() < 0:
        positions, flat_ids = positions[flat_ids >= 0], flat_ids[flat_ids >= 0]
    onehot_T[flat_ids, positions] = 1
    dout_2d = dout.reshape(n, G)
    dW = scratch(ws, "dW", (vocab_size, G), dout.dtype)
    np.matmul(onehot_T, dout_2d, out=dW)
    db = scratch(ws, "db", (G,), dout.dtype)
    np.sum(dout_2d, axis=0, out=db)
    return dW, db
