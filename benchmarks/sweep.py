"""`charrnn sweep` measured: workers against time, and a sweep on a corpus that is not Shakespeare.

    python benchmarks/sweep.py speed [--trials 8 --steps 300]
    python benchmarks/sweep.py python [--trials 10 --budget 10m --workers 2]

The corpus is CPython's standard library: the top-level `*.py` files of the running Python's
stdlib, sorted by name and concatenated (4.7 MB for 3.11). Its last 10% is the held-out tail.

`speed`: the same N trials (a GRU 1x128, the learning rate the only choice, `--steps` each) by
one worker with the machine's threads, by one worker with one thread, then by two workers with
one thread each; the wall time of each, from the first worker's start to the last one's end.

`python`: a sweep of the default search space over the first 90% of the corpus (the trials
select on their own validation split, 81-90%, so the sweep never sees the tail), each trial
trained for `--budget` on the 10-minute preset's schedule, `--workers` workers with one thread
each. Then three models trained alone on the whole corpus for the budget, each scored by
`charrnn eval` (best.npz) on the tail: the default config, the 10-minute preset, and the
sweep's best.yaml. Everything lands in benchmarks/out/sweep-<mode>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import optuna

HERE = Path(__file__).resolve().parent
CHARRNN = [sys.executable, "-m", "charrnn"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SPEED_SPACE = """\
model.cell: gru
model.hidden_size: 128
model.num_layers: 1
train.lr: {low: 0.001, high: 0.01, log: true}
"""


def python_corpus(out: Path) -> tuple[Path, Path, Path]:
    """corpus.txt (the stdlib's top-level sources), train.txt (its first 90%), heldout.txt (the rest)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(path.read_text(encoding="utf-8", errors="replace") for path in sorted(stdlib.glob("*.py")))
    cut = len(text) - len(text) // 10
    paths = out / "corpus.txt", out / "train.txt", out / "heldout.txt"
    for path, part in zip(paths, (text, text[:cut], text[cut:]), strict=True):
        path.write_text(part, encoding="utf-8")
    return paths


def workers(count: int, args: list[str], env: dict[str, str], out: Path) -> float:
    """`count` copies of `charrnn ARGS --seed i` at once; the seconds until the last ends."""
    started = time.perf_counter()
    procs = []
    for i in range(count):
        log = open(out / f"worker-{count}-{i}.log", "w")  # noqa: SIM115 (closed when it ends)
        procs.append((subprocess.Popen([*CHARRNN, *args, "--seed", str(i + 1)], stdout=log, stderr=log, env=env), log))
    for proc, log in procs:
        assert proc.wait() == 0, f"a worker failed: see {log.name}"
        log.close()
    return time.perf_counter() - started


def speed(opts: argparse.Namespace) -> None:
    out = HERE / "out" / "sweep-speed"
    out.mkdir(parents=True, exist_ok=True)
    _, train, _ = python_corpus(out)
    (out / "space.yaml").write_text(SPEED_SPACE)
    common = ["sweep", str(train), "--trials", str(opts.trials), "--steps", str(opts.steps)]
    common += ["--space", str(out / "space.yaml"), "-s", "train.eval_chars=50000", "--pruner", "none"]
    seconds = {}
    for count, threads in ((1, "all"), (1, "1"), (2, "1")):
        folder = out / f"{count}-workers-{threads}-threads"
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        env = dict(os.environ) if threads == "all" else dict(os.environ, **ONE_THREAD)
        seconds[count, threads] = workers(count, [*common, "-o", str(folder)], env, out)
        study = optuna.load_study(study_name=folder.name, storage=journal(folder))
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        line = {"workers": count, "threads_each": threads, "seconds": round(seconds[count, threads], 1)}
        print(json.dumps({**line, "trials": len(done)}), flush=True)
    for base in ((1, "all"), (1, "1")):
        ratio = round(seconds[base] / seconds[2, "1"], 2)
        print(json.dumps({"two workers against one with threads": base[1], "speed-up": ratio}))


def journal(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))


def trained(name: str, corpus: Path, heldout: Path, budget: str, out: Path, config: list[str]) -> dict:
    """A model trained alone on the corpus for the budget, and `charrnn eval` of it on the tail."""
    run = out / name
    started = time.perf_counter()
    cmd = [*CHARRNN, "train", str(corpus), "-o", str(run), "--fresh", "-q", "--time", budget, *config]
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    score = subprocess.run([*CHARRNN, "eval", str(heldout), "-m", str(run), "--json"], check=True, capture_output=True)
    steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    result = {"name": name, "heldout_loss": round(json.loads(score.stdout)["loss"], 4), "steps": steps}
    result["seconds"] = round(seconds)
    print(json.dumps(result), flush=True)
    return result


def python(opts: argparse.Namespace) -> None:
    out = HERE / "out" / "sweep-python"
    out.mkdir(parents=True, exist_ok=True)
    corpus, train, heldout = python_corpus(out)
    folder = out / "study"
    args = ["sweep", str(train), "-o", str(folder), "--trials", str(opts.trials), "--budget", opts.budget]
    args += ["-c", str(HERE.parent / "configs" / "budget-10m.yaml"), "-s", "train.eval_every=250"]
    seconds = workers(opts.workers, args, dict(os.environ, **ONE_THREAD), out)
    table = subprocess.run([*CHARRNN, *args, "--trials", "0"], check=True, capture_output=True, text=True).stdout
    print(table)
    print(json.dumps({"sweep_seconds": round(seconds), "trials": opts.trials, "workers": opts.workers}), flush=True)
    preset = ["-c", str(HERE.parent / "configs" / "budget-10m.yaml")]
    for name, config in (("default", []), ("preset-10m", preset), ("sweep-best", ["-c", str(folder / "best.yaml")])):
        trained(name, corpus, heldout, opts.budget, out, config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["speed", "python"])
    parser.add_argument("--trials", type=int)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    opts.trials = opts.trials or (8 if opts.mode == "speed" else 10)
    speed(opts) if opts.mode == "speed" else python(opts)


if __name__ == "__main__":
    main()
