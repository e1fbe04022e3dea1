"""Peak memory of one very long input, per command: `score` of a single-line record, `sample`
with a long prime, `viz` of a large file, `eval` of a large file (docs/cron.md).

    python benchmarks/long_inputs.py [--cases score,sample,viz,eval] [--mib 200] [--eval-mib 1024]

Trains a 1x16 RNN on tinyshakespeare for a few steps (the input is what grows here, not the
model), writes each input from tinyshakespeare's text (for the single line, with its newlines
turned into spaces), runs the command in a child process with its output to /dev/null, and
prints the child's peak RSS (ru_maxrss) and wall time.
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
TINY = ["-s", "model.cell=rnn", "-s", "model.num_layers=1", "-s", "model.hidden_size=16"]


def write_input(path: Path, mib: int, one_line: bool) -> Path:
    text = CORPUS.read_bytes()
    if one_line:
        text = text.replace(b"\n", b" ")
    with open(path, "wb") as f:
        while f.tell() < mib << 20:
            f.write(text[: (mib << 20) - f.tell()])
    return path


def measure(args: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of `charrnn ARGS`, its standard output thrown away."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        child = subprocess.Popen([*CHARRNN, *args], stdout=sink)
        _, status, usage = os.wait4(child.pid, 0)
    assert status == 0, f"charrnn {' '.join(args)} exited with {status}"
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="score,sample,viz,eval")
    parser.add_argument("--mib", type=int, default=200, help="size of the line, the prime and viz's file")
    parser.add_argument("--eval-mib", type=int, default=1024, help="size of eval's file")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = str(folder / "run")
        subprocess.run([*CHARRNN, "train", str(CORPUS), "-o", run, *TINY, "--steps", "50", "-q"], check=True)
        cases = {
            "score": (opts.mib, True, lambda p: ["score", "-m", run, str(p)], "`score`, one line"),
            "sample": (opts.mib, True, lambda p: ["sample", "-m", run, "--prime-file", str(p), "-n", "1"], "prime"),
            "viz": (opts.mib, False, lambda p: ["viz", "-m", run, str(p), "-o", str(folder / "p.html")], "`viz`"),
            "eval": (opts.eval_mib, False, lambda p: ["eval", "-m", run, str(p)], "`eval`"),
        }
        print("| command | input | peak RSS MiB | seconds |\n| --- | --- | --- | --- |", flush=True)
        for name in opts.cases.split(","):
            mib, one_line, command, label = cases[name]
            path = write_input(folder / "input.txt", mib, one_line)
            peak, seconds = measure(command(path))
            print(f"| {label} | {mib:,} MiB | {peak:.0f} | {seconds:.0f} |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
