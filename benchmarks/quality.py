"""Validation loss after a fixed wall-clock budget, per config (tinyshakespeare unless --corpus).

    python benchmarks/quality.py --name NAME --time 30m --at 10,30 -c configs/budget-30m.yaml
        [--corpus data/shakespeare.txt] [-s KEY=VALUE ...]
    python benchmarks/quality.py --name NAME --steps 9000 -c configs/budget-10m.yaml [--resume]

--steps trains a fixed number of steps instead of a wall-clock budget (the cosine schedule ends
there): the steps a budget allows on a machine of a given speed, measured however busy this one is.
--resume continues the run directory's checkpoint instead of starting over: a --steps measurement
longer than one sitting, split over several (exact resume makes it the same run); minutes are
summed over the invocations.

Trains with the real CLI (last 10% held out) into benchmarks/out/quality-<name>, then prints,
for each checkpoint minute in --at, the last validation loss logged by then, the best so far,
and the median training chars/s; then a summary: `charrnn eval` of the run's model (best.npz)
on the whole held-out tail, with `--dynamic` also `charrnn eval --dynamic`, and the share of
the run's time that validation took (its events' eval_seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from charrnn.metrics import read_metrics

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
VAL_FRACTION = 0.1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="10m")
    parser.add_argument("--steps", type=int, help="train this many steps instead of --time")
    parser.add_argument("--at", default="10", help="minutes at which to report, comma-separated")
    parser.add_argument("--name", required=True)
    parser.add_argument("-c", "--config")
    parser.add_argument("-s", "--set", action="append", default=[])
    parser.add_argument("--corpus", default=str(CORPUS), help="default: ../shared/data/tinyshakespeare.txt")
    parser.add_argument("--dynamic", action="store_true", help="also report charrnn eval --dynamic on the tail")
    parser.add_argument("--resume", action="store_true", help="continue the run directory instead of --fresh")
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
        "-q",
        "-s",
        f"train.val_fraction={VAL_FRACTION}",
    ]
    cmd += [] if opts.resume else ["--fresh"]
    cmd += ["-s", f"train.max_steps={opts.steps}"] if opts.steps else ["--time", opts.time]
    if opts.config:
        cmd += ["-c", opts.config]
    for kv in opts.set:
        cmd += ["-s", kv]
    subprocess.run(cmd, check=True)
    events = read_metrics(run / "metrics.jsonl")
    evals = [e for e in events if e.get("val_loss") is not None]
    speed = statistics.median(e["chars_per_sec"] for e in events if e.get("chars_per_sec"))
    minutes = [float(m) for m in opts.at.split(",")] if not opts.steps else [evals[-1]["minutes"]]
    for minute in minutes:
        seen = [e for e in evals if e["minutes"] <= minute + 1 / 60]
        if seen:
            last, best = seen[-1], min(e["val_loss"] for e in seen)
            print(
                json.dumps(
                    {
                        "name": opts.name,
                        "minutes": round(minute, 1),
                        "step": last["step"],
                        "val_loss": round(last["val_loss"], 4),
                        "best_val_loss": round(best, 4),
                        "chars_per_sec": round(speed),
                    }
                )
            )
    print(json.dumps(summary(run, Path(opts.corpus), evals, opts.dynamic)))


def summary(run: Path, corpus: Path, evals: list[dict], dynamic: bool) -> dict:
    """`charrnn eval` (and --dynamic) of the run's model on the held-out tail, and the share of
    the run's time spent validating."""
    text = corpus.read_text(encoding="utf-8")
    (run / "heldout.txt").write_text(text[len(text) - int(len(text) * VAL_FRACTION) :], encoding="utf-8")
    cmd = [sys.executable, "-m", "charrnn", "eval", str(run / "heldout.txt"), "-m", str(run), "--json"]
    result = {"eval_loss": round(json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)["loss"], 4)}
    if dynamic:
        started = time.perf_counter()
        both = json.loads(subprocess.run([*cmd, "--dynamic"], check=True, capture_output=True).stdout)
        result["dynamic_loss"] = round(both["dynamic"]["loss"], 4)
        result["dynamic_chars_per_sec"] = round(both["dynamic"]["chars"] / (time.perf_counter() - started))
    result["eval_share"] = round(sum(e.get("eval_seconds", 0.0) for e in evals) / (evals[-1]["minutes"] * 60), 4)
    result["steps"] = evals[-1]["step"]
    result["minutes"] = round(evals[-1]["minutes"], 1)
    return result


if __name__ == "__main__":
    main()
