"""charrnn against the PyTorch reference on the same configs, alternating the two in one run.

    python benchmarks/bench.py [--rounds 2] [--quick] [--only train|sample|eval|score|gemm]

Every measurement runs in its own process (benchmarks/worker.py) so the two libraries' thread
pools never compete. Prints a Markdown table (copy it into benchmarks/RESULTS.md) and writes
benchmarks/out/results.json. chars/s are medians over the rounds; a ratio is the median over the
rounds of charrnn / torch chars/s within the round, with its range (min-max) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAIN = [  # cell, H, layers, B, T, measured steps
    ("rnn", 128, 1, 32, 64, 60),
    ("rnn", 512, 1, 64, 100, 20),
    ("lstm", 256, 2, 32, 64, 20),
    ("lstm", 512, 2, 64, 100, 8),
    ("gru", 256, 2, 32, 64, 20),
]
SAMPLE = [("lstm", 512, 2, 1, 2000), ("lstm", 512, 2, 32, 500)]  # cell, H, layers, streams, chars
EVAL = [("rnn", 512, 1), ("lstm", 256, 2)]
SCORE = [("gru", 256, 2, 100_000)]  # the default model; lines of tinyshakespeare


def measure(engine: str, task: str, *args: object) -> dict:
    cmd = [sys.executable, str(HERE / "worker.py"), engine, task, *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def alternate(task: str, args: tuple, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {"charrnn": [], "torch": []}
    for _ in range(rounds):
        for engine in runs:
            runs[engine].append(measure(engine, task, *args))
    speed = {e: statistics.median(r["chars_per_sec"] for r in rs) for e, rs in runs.items()}
    rss = {e: max(r["peak_rss_mib"] for r in rs) for e, rs in runs.items()}
    # Each round's two runs are back to back, so their ratio cancels the machine's slow drift.
    ratios = [c["chars_per_sec"] / t["chars_per_sec"] for c, t in zip(runs["charrnn"], runs["torch"], strict=True)]
    return {
        "args": args,
        "charrnn": speed["charrnn"],
        "torch": speed["torch"],
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "rss_charrnn": rss["charrnn"],
        "rss_torch": rss["torch"],
    }


def _ratio(r: dict) -> str:
    low, high = r["ratio_range"]
    return f"**{r['ratio']:.2f}** ({low:.2f}-{high:.2f})"


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 np.matmul ceiling on this machine, best of `repeats`."""
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="first train config only, 1 round")
    parser.add_argument("--only", choices=["train", "sample", "eval", "score", "gemm"])
    opts = parser.parse_args()
    rounds = 1 if opts.quick else opts.rounds
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": rounds,
    }
    if opts.only in (None, "gemm"):
        results["gemm_gflops"] = gemm_gflops()
        print(f"np.matmul float32 2048^3: {results['gemm_gflops']:.0f} GFLOP/s", flush=True)
    if opts.only in (None, "train"):
        print("\n| config (float32, Adam, clip 5) | charrnn chars/s | torch chars/s | ratio (range) | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- |")
        results["train"] = []
        for cell, H, L, B, T, steps in TRAIN[:1] if opts.quick else TRAIN:
            r = alternate("train", (cell, H, L, B, T, steps), rounds)
            results["train"].append(r)
            flops = 6 * H * (H + 65) * L if cell == "rnn" else None
            note = f" ({r['charrnn'] * flops / 1e9:.1f} GFLOP/s)" if flops and L == 1 else ""
            print(
                f"| {cell}, H {H}, {L} layer{'s' * (L > 1)}, B {B}, T {T} | {r['charrnn']:,.0f}{note} | "
                f"{r['torch']:,.0f} | {_ratio(r)} | {r['rss_charrnn']:.0f} / {r['rss_torch']:.0f} |",
                flush=True,
            )
    if opts.only in (None, "sample") and not opts.quick:
        print("\n| sampling | charrnn chars/s | torch chars/s | ratio (range) |\n| --- | --- | --- | --- |")
        results["sample"] = []
        for cell, H, L, streams, chars in SAMPLE:
            r = alternate("sample", (cell, H, L, streams, chars), rounds)
            results["sample"].append(r)
            print(
                f"| {cell} {L}x{H}, {streams} stream(s) | {r['charrnn']:,.0f} | {r['torch']:,.0f} | {_ratio(r)} |",
                flush=True,
            )
        one, many = results["sample"][0]["charrnn"], results["sample"][1]["charrnn"]
        print(f"\ncharrnn 32 streams / 1 stream: {many / one:.1f}x chars/s")
    if opts.only in (None, "eval") and not opts.quick:
        print("\n| eval, tinyshakespeare val, 1 stream | charrnn chars/s | torch chars/s | ratio (range) |")
        print("| --- | --- | --- | --- |")
        results["eval"] = []
        for cell, H, L in EVAL:
            r = alternate("eval", (cell, H, L), rounds)
            results["eval"].append(r)
            print(f"| {cell} {L}x{H} | {r['charrnn']:,.0f} | {r['torch']:,.0f} | {_ratio(r)} |", flush=True)
    if opts.only in (None, "score") and not opts.quick:
        print(
            "\n| score, lines as parallel streams | charrnn chars/s | torch chars/s | ratio (range) | one-stream eval |"
        )
        print("| --- | --- | --- | --- | --- |")
        results["score"] = []
        for cell, H, L, lines in SCORE:
            r = alternate("score", (cell, H, L, lines), rounds)
            r["eval_charrnn"] = statistics.median(
                measure("charrnn", "eval", cell, H, L)["chars_per_sec"] for _ in range(rounds)
            )
            results["score"].append(r)
            print(
                f"| {cell} {L}x{H}, {lines:,} lines | {r['charrnn']:,.0f} | {r['torch']:,.0f} | {_ratio(r)} | "
                f"{r['eval_charrnn']:,.0f} (score {r['charrnn'] / r['eval_charrnn']:.1f}x faster) |",
                flush=True,
            )
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
