"""Scratch arrays that are allocated once and reused by every call of the same shape."""

from __future__ import annotations

import numpy as np


class Workspace:
    """Named scratch arrays, reallocated only when a name is asked for with a new shape or dtype.

    The training loop calls the layers with the same `(T, B)` every step, so after the first
    step no layer allocates memory. A layer's cache points into these arrays: each forward
    must be followed by its backward before the next forward on the same workspace.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array `name` of `shape` and `dtype`."""
        array = self._arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = np.empty(shape, dtype)
            self._arrays[name] = array
        return array


def scratch(ws: Workspace | None, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array from `ws`, or a fresh one when no workspace is given."""
    if ws is None:
        return np.empty(shape, dtype)
    return ws.get(name, shape, dtype)


def transposed(ws: Workspace | None, name: str, W: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of W.T: per-step products run faster on it than on a strided view."""
    out = scratch(ws, name, W.shape[::-1], W.dtype)
    np.copyto(out, W.T)
    return out


def swap_leading(ws: Workspace | None, name: str, x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `x (A, C, B)` as `(C, A, B)`: turns a step-major sequence `(T, F, B)`,
    whose step is one contiguous block, into a feature-major one `(F, T, B)`, whose `(F, T*B)`
    reshape is the operand of the all-timestep GEMMs, and back."""
    out = scratch(ws, name, (x.shape[1], x.shape[0], *x.shape[2:]), x.dtype)
    np.copyto(out, x.swapaxes(0, 1))
    return out
