"""Training speed of the two engines on this CPU, and of data parallel over two processes.

    python benchmarks/engines.py [--rounds 2] [--only engines|parallel]

Runs the real `charrnn train` (the whole loop: batches, steps, metrics) on tinyshakespeare for
each config with `train.engine=numpy` and `train.engine=torch`, alternating the two within each
round, and `torch` in one process against `torchrun --nproc_per_node 2` (one thread each, as
torchrun sets). A run's speed is the median chars/s of its metrics events after the first (the
speed of the steps alone: evaluations are not in it); a ratio is the median over the rounds of
the two runs' ratio within a round. Prints Markdown tables for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = [  # cell, H, layers, B, T, steps
    ("rnn", 128, 1, 32, 64, 200),
    ("rnn", 512, 1, 64, 100, 40),
    ("lstm", 512, 2, 64, 100, 16),
    ("gru", 256, 2, 32, 64, 60),
]


def train(folder: Path, name: str, config: tuple, engine: str, processes: int = 1) -> float:
    """chars/s of one `charrnn train` run (median over its metrics events after the first)."""
    cell, H, L, B, T, steps = config
    settings = {
        "model.cell": cell,
        "model.hidden_size": H,
        "model.num_layers": L,
        "train.batch_size": B,
        "train.seq_len": T,
        "train.engine": engine,
        "train.eval_every": 1_000_000,
        "train.eval_chars": 10_000,
        "train.log_every": max(1, steps // 8),
    }
    shutil.rmtree(folder / name, ignore_errors=True)  # a run of its own: no earlier events in its metrics
    args = ["train", str(CORPUS), "-o", str(folder / name), "--steps", str(steps), "-q"]
    args += [item for key, value in settings.items() for item in ("-s", f"{key}={value}")]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*launch, "-m", "charrnn", *args]
    else:
        command = [sys.executable, "-m", "charrnn", *args]
    subprocess.run(command, check=True, capture_output=True)
    events = [json.loads(line) for line in (folder / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(e["chars_per_sec"] for e in events[1:-1])


def compare(folder: Path, config: tuple, runs: dict[str, dict], rounds: int) -> tuple[dict, list[float]]:
    """Median chars/s per run kind, and the per-round ratios of the second kind to the first."""
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, kind in runs.items():
            speeds[name].append(train(folder, name, config, **kind))
    first, second = list(speeds)
    ratios = [b / a for a, b in zip(speeds[first], speeds[second], strict=True)]
    return {name: statistics.median(v) for name, v in speeds.items()}, ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["engines", "parallel"])
    opts = parser.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if opts.only != "parallel":
            print("| config | B x T | numpy engine chars/s | torch engine chars/s | torch / numpy (range) |")
            print("| --- | --- | --- | --- | --- |")
            for config in CONFIGS:
                cell, H, L, B, T, _ = config
                runs = {"numpy": {"engine": "numpy"}, "torch": {"engine": "torch"}}
                speed, ratios = compare(folder, config, runs, opts.rounds)
                print(
                    f"| {cell} {L}x{H} | {B}x{T} | {speed['numpy']:,.0f} | {speed['torch']:,.0f} | "
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
                    flush=True,
                )
        if opts.only != "engines":
            print("\n| config | B x T | torch, 1 process chars/s | torchrun, 2 processes chars/s | 2 / 1 (range) |")
            print("| --- | --- | --- | --- | --- |")
            for config in CONFIGS[1:3]:
                cell, H, L, B, T, _ = config
                runs = {"one": {"engine": "torch"}, "two": {"engine": "torch", "processes": 2}}
                speed, ratios = compare(folder, config, runs, opts.rounds)
                print(
                    f"| {cell} {L}x{H} | {B}x{T} | {speed['one']:,.0f} | {speed['two']:,.0f} | "
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
