"""One-hot input times a weight matrix, done as a column gather.

A one-hot `x_t` (V,) times `W (V, G)` selects a row of W, so the forward pass gathers rows of
`W + b` (columns of its transpose, step by step, when B > 1) straight into the step-major
`(T, G, B)` layout the cells read, and the weight gradient is `onehot(ids) @ dout^T`, one GEMM over all T*B positions.
An id < 0 stands for no input: a zero vector, so that position gets only the bias.
"""

from __future__ import annotations

import numpy as np

from charrnn.layers.workspace import Workspace, scratch, transposed


def table(W: np.ndarray, b: np.ndarray, ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """W (V, G), b (G,) -> the rows of W + b and then b alone (for "no input"), (V + 1, G), and
    the same as columns, (G, V + 1)."""
    V, G = W.shape
    rows = scratch(ws, "table_rows", (V + 1, G), W.dtype)
    np.add(W, b, out=rows[:V])
    rows[V] = b
    return rows, transposed(ws, "table_cols", rows)


def forward(ids: np.ndarray, tables: tuple[np.ndarray, np.ndarray], ws: Workspace | None = None) -> np.ndarray:
    """Inputs: ids (T, B) ints < V; `table(W, b)`.
    Returns: (T, G, B), `[t, :, b] = W[ids[t, b]] + b` (just b where ids[t, b] < 0)."""
    rows, cols = tables
    V, G = rows.shape[0] - 1, rows.shape[1]
    if ids.size and ids.min() < 0:
        ids = np.where(ids < 0, V, ids)
    T, B = ids.shape
    out = scratch(ws, "xw", (T, G, B), rows.dtype)
    # mode="clip" (ids < V by contract): mode="raise" would buffer the output.
    if B == 1:  # (T, G, 1) is (T, G): one row gather
        rows.take(ids[:, 0], axis=0, out=out.reshape(T, G), mode="clip")
    else:  # one (G, B) block per step
        for t in range(T):
            cols.take(ids[t], axis=1, out=out[t], mode="clip")
    return out


def backward(
    dout: np.ndarray, ids: np.ndarray, vocab_size: int, ws: Workspace | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs: dout (G, T, B); ids (T, B). Returns: dW (V, G), db (G,)."""
    G = dout.shape[0]
    flat_ids = ids.reshape(-1)
    n = flat_ids.size
    onehot = scratch(ws, "onehot", (vocab_size, n), dout.dtype)  # (V, T*B)
    onehot.fill(0)
    positions = np.arange(n)
    every_position_has_input = not n or flat_ids.min() >= 0
    if not every_position_has_input:
        positions, flat_ids = positions[flat_ids >= 0], flat_ids[flat_ids >= 0]
    onehot[flat_ids, positions] = 1
    dout_2d = dout.reshape(G, n)
    dW = scratch(ws, "dW", (vocab_size, G), dout.dtype)
    np.matmul(onehot, dout_2d.T, out=dW)
    db = scratch(ws, "db", (G,), dout.dtype)
    if every_position_has_input:  # each column went to exactly one row of dW: a V-row sum
        np.sum(dW, axis=0, out=db)
    else:
        np.sum(dout_2d, axis=1, out=db)
    return dW, db
