"""Validation loss after a fixed wall-clock budget, per config (tinyshakespeare unless --corpus).

    python benchmarks/quality.py --name NAME --time 30m --at 10,30 -c configs/budget-30m.yaml
        [--corpus data/shakespeare.txt] [-s KEY=VALUE ...]

Trains with the real CLI (last 10% held out) into benchmarks/out/quality-<name>, then prints,
for each checkpoint minute in --at, the last validation loss logged by then, the best so far,
and the median training chars/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="10m")
    parser.add_argument("--at", default="10", help="minutes at which to report, comma-separated")
    parser.add_argument("--name", required=True)
    parser.add_argument("-c", "--config")
    parser.add_argument("-s", "--set", action="append", default=[])
    parser.add_argument("--corpus", default=str(CORPUS), help="default: ../shared/data/tinyshakespeare.txt")
    opts = parser.parse_args()
    run = HERE / "out" / f"quality-{opts.name}"
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        opts.corpus,
        "-o",
        str(run),
        "--fresh",
        "-q",
        "--time",
        opts.time,
        "-s",
        "train.val_fraction=0.1",
    ]
    if opts.config:
        cmd += ["-c", opts.config]
    for kv in opts.set:
        cmd += ["-s", kv]
    subprocess.run(cmd, check=True)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e.get("val_loss") is not None]
    speed = statistics.median(e["chars_per_sec"] for e in events if e.get("chars_per_sec"))
    for minute in (float(m) for m in opts.at.split(",")):
        seen = [e for e in evals if e["elapsed"] <= minute * 60 + 1]
        if seen:
            last, best = seen[-1], min(e["val_loss"] for e in seen)
            print(
                json.dumps(
                    {
                        "name": opts.name,
                        "minutes": minute,
                        "step": last["step"],
                        "val_loss": round(last["val_loss"], 4),
                        "best_val_loss": round(best, 4),
                        "chars_per_sec": round(speed),
                    }
                )
            )


if __name__ == "__main__":
    main()
