"""Peak memory of `charrnn sample --num-samples N -n 1000` as N grows: flat, since samples are
generated and written 1,024 streams at a time.

    python benchmarks/sample_memory.py [--counts 1000,10000,100000] [--len 1000]

Trains a small model on tinyshakespeare (seconds), then runs `charrnn sample` in a child process
for each N (output to /dev/null) and prints its peak RSS (the child's own ru_maxrss) and speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
CHARRNN = [sys.executable, "-m", "charrnn"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1000,10000,100000", help="values of --num-samples, comma-separated")
    parser.add_argument("--len", type=int, default=1000, help="characters per sample")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        small = ["-s", "model.cell=rnn", "-s", "model.num_layers=1", "-s", "model.hidden_size=32"]
        subprocess.run([*CHARRNN, "train", str(CORPUS), "-o", str(run), *small, "--steps", "50", "-q"], check=True)
        print("| --num-samples | characters | peak RSS MiB | seconds | chars/s |\n| --- | --- | --- | --- | --- |")
        for count in (int(c) for c in opts.counts.split(",")):
            start = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                cmd = [*CHARRNN, "sample", "-m", str(run), "--num-samples", str(count), "-n", str(opts.len)]
                child = subprocess.Popen([*cmd, "--seed", "1"], stdout=sink)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
            assert status == 0, status
            seconds, chars = time.perf_counter() - start, count * opts.len
            peak = usage.ru_maxrss / 1024
            print(f"| {count:,} | {chars:,} | {peak:.0f} | {seconds:.0f} | {chars / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
