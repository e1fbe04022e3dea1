"""Where a stacked training step spends its time: what a wavefront over layers could save.

    python benchmarks/step_anatomy.py [--reps 20]

A wavefront (layer 0 at step t beside layer 1 at step t-1) keeps every multiply-add and every
matrix product; what it saves is numpy calls: the two layers' elementwise passes become one
pass each over twice the data. One layer's loop at batch 2B makes the same elementwise calls on
the same amount of data as such a fused pair, so for 2 layers at batch B:

    saving = 2 e(B) - e(2B),  e(b) = time of one layer's loop (`cell.forward` + `cell.backward`)
                                      at batch b, minus its per-step products alone

and the bound is that saving as a share of one full training step (loss, backward, clip, Adam)
at batch B. It is an upper bound: a wavefront adds work too (layer 1's input projection moves
into the time loop, one product per step instead of one for the chunk).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from charrnn.config import TrainConfig
from charrnn.layers import CELLS
from charrnn.model import CharRNN, ModelShape, init_params
from charrnn.optim import Optimizer, clip_by_global_norm

CONFIGS = [("gru", 256), ("lstm", 256), ("gru", 512), ("lstm", 512)]
B, T, L, V = 32, 64, 2, 65


def median_time(fn, reps: int) -> float:
    fn()  # warm the workspaces
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(cell_name: str, H: int, reps: int) -> float:
    """Median seconds of one training step of a 2-layer model at batch B."""
    rng = np.random.default_rng(0)
    shape = ModelShape(V, cell_name, H, L)
    model = CharRNN(shape, init_params(shape, rng, np.dtype(np.float32)))
    opt = Optimizer(TrainConfig().optimizer_settings(), model.params)
    ids = rng.integers(0, V, (T, B))
    state = model.initial_state(B)

    def step() -> None:
        model.loss(ids, ids, state)
        grads = model.backward()
        clip_by_global_norm(grads, 5.0)
        opt.step(model.params, grads, 2e-3)

    return median_time(step, reps)


def elementwise(cell_name: str, H: int, batch: int, reps: int) -> tuple[float, float]:
    """(loop, products): median seconds of one layer's forward + backward over T steps at
    `batch`, and of its 2T per-step matrix products alone."""
    rng = np.random.default_rng(0)
    cell = CELLS[cell_name]
    G = cell.GATES * H
    params = init_params(ModelShape(V, cell_name, H, 1), rng, np.dtype(np.float32))
    weights = cell.prepare({n: params[f"layers.0.{n}"] for n in cell.RECURRENT_PARAMS})
    xw = rng.standard_normal((T, G, batch)).astype(np.float32)
    state0 = np.zeros((cell.STATE, H, batch), np.float32)
    dhs = rng.standard_normal((H, T, batch)).astype(np.float32)

    def loop() -> None:
        _, _, cache = cell.forward(xw, state0, weights)
        cell.backward(dhs, cache)

    W_fwd, W_bwd = weights["W_exp"], weights["W_hh"]
    h, out_f = np.zeros((H, batch), np.float32), np.empty((G, batch), np.float32)
    d, out_b = np.zeros((G, batch), np.float32), np.empty((H, batch), np.float32)

    def products() -> None:
        for _ in range(T):
            np.matmul(W_fwd, h, out=out_f)
            np.matmul(W_bwd, d, out=out_b)

    return median_time(loop, reps), median_time(products, reps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    opts = parser.parse_args()
    print(f"2 layers, B {B}, T {T}; milliseconds per training step or per layer loop")
    print("| cell | step | layer loop | its products | e(B) | e(2B) | saving 2e(B)-e(2B) | bound |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell_name, H in CONFIGS:
        step = training_step(cell_name, H, opts.reps)
        loop, prods = elementwise(cell_name, H, B, opts.reps)
        loop2, prods2 = elementwise(cell_name, H, 2 * B, opts.reps)
        e, e2 = loop - prods, loop2 - prods2
        saving = 2 * e - e2
        print(
            f"| {cell_name} 2×{H} | {1e3 * step:.1f} | {1e3 * loop:.1f} | {1e3 * prods:.1f} | {1e3 * e:.1f} "
            f"| {1e3 * e2:.1f} | {1e3 * saving:.1f} | {100 * saving / step:.0f}% |"
        )


if __name__ == "__main__":
    main()
