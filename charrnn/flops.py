"""Model FLOPs utilisation (MFU), as nanoGPT reports it: the arithmetic a model needs per
character trained, times the characters trained per second, against the machine's peak.

Per character, each layer of a cell with G gates (rnn 1, gru 3, lstm 4) multiplies its input
by `W_xh` (I x G*H; the first layer's input is one-hot, a row lookup with no arithmetic) and its
previous state by `W_hh` (H x G*H); the read-out multiplies the top state by `W_hy` (H x V). A
multiply-add is 2 FLOPs, and the backward pass costs twice the forward (one product for the
input's gradient, one for the weights'), so training costs 6 FLOPs per weight used: nanoGPT's
6N. The element-wise work (gates, tanh, softmax) is left out, as nanoGPT leaves it out.

The peak is the best of a few 2048 x 2048 x 2048 matrix products in the training's dtype, on
its engine and device, measured once per machine and remembered in
`$XDG_CACHE_HOME/charrnn/peak.json` (`~/.cache` by default). `CHARRNN_PEAK_FLOPS` sets it
instead (a vendor's figure, say).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.model import ModelShape

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
PEAK_SIZE = 2048  # n of the n x n x n products that measure the peak
PEAK_ENV = "CHARRNN_PEAK_FLOPS"


def train_flops_per_char(shape: ModelShape) -> int:
    """FLOPs of one training step (forward and backward) per character, for a model of `shape`."""
    H, G = shape.hidden_size, GATES[shape.cell] * shape.hidden_size
    weights = sum((H if i else 0) * G + H * G for i in range(shape.num_layers)) + H * shape.vocab_size
    return 6 * weights


def peak_flops(engine: str, device: str, dtype: str) -> float:
    """The machine's peak FLOP/s for products in `dtype` on `engine` ("numpy" or "torch") and
    `device`: `CHARRNN_PEAK_FLOPS`, else remembered, else measured now (about a second)."""
    given = os.environ.get(PEAK_ENV)
    if given is not None:
        try:
            value = float(given)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise InvalidUsageError(f"{PEAK_ENV} must be a number of FLOP/s > 0, got {given!r}")
        return value
    key = f"{engine}/{device}/{dtype}/{_machine(engine, device)}"
    path = _cache()
    known = _read(path)
    if key not in known:
        known[key] = measure(engine, device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(json.dumps(known, indent=1).encode("utf-8")))
        except (OSError, CharRNNError):  # a read-only home: measured again next time
            pass
    return known[key]


def measure(engine: str, device: str, dtype: str, n: int = PEAK_SIZE, repeats: int = 3) -> float:
    """The best FLOP/s of `repeats` n x n x n products (after one to warm up)."""
    if engine == "torch":
        import torch

        a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
        sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)

        def product() -> None:
            torch.mm(a, b)
            sync()
    else:
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))

        def product() -> None:
            a @ b

    product()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def _machine(engine: str, device: str) -> str:
    """What the peak depends on: the processor, the threads, the library's version."""
    if engine == "torch":
        import torch

        library = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        if device.startswith("cuda"):
            return f"{torch.cuda.get_device_name(torch.device(device))}, {library}"
    else:
        threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or "default"
        library = f"numpy {np.__version__}, {threads} threads"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_processor()}, {cores} cores, {library}"


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charrnn" / "peak.json"


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float) and v > 0}
