"""Where a stacked training step spends its time: what a wavefront over layers could save.

    python benchmarks/step_anatomy.py [--reps 20]

A wavefront (layer 0 at step t beside layer 1 at step t-1) keeps every multiply-add and merges
the two layers' elementwise calls into one call each, so it can save at most the per-call cost
of half of those calls. This measures, for 2-layer cells at B 32, T 64:

- step: one full training step (loss, backward, clip, Adam), median of --reps;
- cells: the recurrent loops alone (`cell.forward` + `cell.backward`, both layers);
- products: the loops' per-step matrix products alone (T forward and T backward per layer);
- elementwise = cells - products, and the bound = elementwise / 2 as a share of the step.

The bound assumes the elementwise time is all per-call overhead, which overstates it.
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


def anatomy(cell_name: str, H: int, reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    shape = ModelShape(V, cell_name, H, L)
    model = CharRNN(shape, init_params(shape, rng, np.dtype(np.float32)))
    opt = Optimizer(TrainConfig(), model.params)
    ids = rng.integers(0, V, (T, B))
    state = model.initial_state(B)

    def step() -> None:
        model.loss(ids, ids, state)
        grads = model.backward()
        clip_by_global_norm(grads, 5.0)
        opt.step(model.params, grads, 2e-3)

    cell = CELLS[cell_name]
    G = cell.GATES * H
    weights = cell.prepare({n: model.params[f"layers.0.{n}"] for n in cell.RECURRENT_PARAMS})
    xw = rng.standard_normal((T, G, B)).astype(np.float32)
    state0 = np.zeros((cell.STATE, H, B), np.float32)
    dhs = rng.standard_normal((H, T, B)).astype(np.float32)

    def loops() -> None:
        for _ in range(L):
            _, _, cache = cell.forward(xw, state0, weights)
            cell.backward(dhs, cache)

    W_fwd, W_bwd = weights["W_exp"], weights["W_hh"]
    h, out_f = np.zeros((H, B), np.float32), np.empty((G, B), np.float32)
    d, out_b = np.zeros((G, B), np.float32), np.empty((H, B), np.float32)

    def products() -> None:
        for _ in range(L * T):
            np.matmul(W_fwd, h, out=out_f)
            np.matmul(W_bwd, d, out=out_b)

    t_step, t_cells, t_products = (median_time(f, reps) for f in (step, loops, products))
    elementwise = t_cells - t_products
    return {
        "step_ms": 1e3 * t_step,
        "cells_ms": 1e3 * t_cells,
        "products_ms": 1e3 * t_products,
        "elementwise_ms": 1e3 * elementwise,
        "bound_pct": 100 * elementwise / 2 / t_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    opts = parser.parse_args()
    print("| cell | step ms | cell loops ms | their products ms | elementwise ms | wavefront bound |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell_name, H in CONFIGS:
        r = anatomy(cell_name, H, opts.reps)
        print(
            f"| {cell_name} 2×{H} | {r['step_ms']:.1f} | {r['cells_ms']:.1f} | {r['products_ms']:.1f} "
            f"| {r['elementwise_ms']:.1f} | ≤ {r['bound_pct']:.0f}% |"
        )


if __name__ == "__main__":
    main()
