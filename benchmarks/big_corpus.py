"""A corpus larger than it is sensible to hold in memory: 1 GiB, 100 steps of the default config.

    python benchmarks/big_corpus.py [--gib 1.0]

Builds benchmarks/out/big.txt by repeating tinyshakespeare's lines in shuffled order (seeded),
then runs `charrnn train big.txt --steps 100` twice (both --fresh, so the second run trains from
scratch but reuses the encoded-corpus cache). Reports each run's peak RSS (from wait4) and the
seconds from process start to the first training step.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def build(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size >= size:
        return
    lines = SOURCE.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(0)
    written = 0
    with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(lines)
            chunk = "".join(lines)[: size - written]
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
    os.replace(path.with_suffix(".tmp"), path)


def timed_run(corpus: Path, run_dir: Path) -> tuple[float, float, float]:
    """(seconds to the first step, total seconds, peak RSS MiB) of one training run."""
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(run_dir), "--fresh", "--steps", "100", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
    first_step = None
    for line in proc.stderr:
        sys.stderr.write(line)
        if first_step is None and " -> " in line and "run " in line:  # the line printed as the loop starts
            first_step = time.perf_counter() - start
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("training failed")
    return first_step or float("nan"), time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    opts = parser.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    corpus = out / "big.txt"
    build(corpus, int(opts.gib * 2**30))
    run_dir = out / "big-run"
    for cache in run_dir.glob("corpus-*"):
        cache.unlink()
    for label in ("first run (encodes the corpus)", "second run (cache reused)"):
        to_first, total, rss = timed_run(corpus, run_dir)
        print(f"{label}: first step after {to_first:.1f}s, 100 steps done after {total:.1f}s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
