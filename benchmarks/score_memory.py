"""Peak memory of `charrnn score` as its input grows: flat, since records stream through.

    python benchmarks/score_memory.py [--sizes 16,128,1024]   # MiB of input

Trains a small model on tinyshakespeare (seconds), writes inputs of the given sizes made of
tinyshakespeare's lines, runs `charrnn score` on each in a child process (output to /dev/null)
and prints its peak RSS (the child's ru_maxrss) and throughput.
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
    parser.add_argument("--sizes", default="16,128,1024", help="input sizes in MiB, comma-separated")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = ["-s", "model.cell=rnn", "-s", "model.num_layers=1", "-s", "model.hidden_size=32"]
        subprocess.run([*CHARRNN, "train", str(CORPUS), "-o", str(folder / "run"), *small, "--steps", "50", "-q"],
                       check=True)  # fmt: skip
        lines = CORPUS.read_bytes()
        print("| input | records | peak RSS MiB | seconds | chars/s |\n| --- | --- | --- | --- | --- |")
        for size in (int(s) for s in opts.sizes.split(",")):
            path = folder / "input.txt"
            with open(path, "wb") as f:
                while f.tell() < size << 20:
                    f.write(lines)
            with open(path, "rb") as f:
                records = sum(1 for _ in f)
            start = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                child = subprocess.Popen([*CHARRNN, "score", "-m", str(folder / "run"), str(path)], stdout=sink)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
            assert status == 0, status
            seconds = time.perf_counter() - start
            mib, peak = path.stat().st_size / 2**20, usage.ru_maxrss / 1024
            print(
                f"| {mib:,.0f} MiB | {records:,} | {peak:.0f} | {seconds:.0f} | {mib * 2**20 / seconds:,.0f} |",
                flush=True,
            )
            path.unlink()


if __name__ == "__main__":
    main()
