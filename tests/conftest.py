from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from charrnn.model import CharRNN, ModelShape, Regularisers, init_params

TINY = [  # a small vanilla RNN, whatever the defaults are
    "-s",
    "model.cell=rnn",
    "-s",
    "model.num_layers=1",
    "-s",
    "model.hidden_size=16",
    "-s",
    "train.batch_size=4",
    "-s",
    "train.seq_len=8",
    "-s",
    "train.eval_every=10",
    "-s",
    "train.log_every=5",
]


ROOT = Path(__file__).resolve().parent.parent


def doc_snippet(page: str, heading: str) -> str:
    """The first ```python block after the line that starts with `heading` in `page` (a path from
    the project's root: README.md, docs/serving.md, ...)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    after = text[re.search(rf"^{re.escape(heading)}", text, re.M).start() :]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def run_cli(
    *args: str, cwd: Path, input: bytes | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python -m charrnn ARGS` in a real subprocess, as a user would run it."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """A user error: the exit code, no traceback, and one line that says what is wrong (the last
    line on stderr; only progress lines from before the failure may precede it)."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("charrnn: error: "), err
    assert sum("error" in line for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], err
    assert proc.stdout == b""
    return lines[-1]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small generated corpus with some structure (and non-ASCII characters)."""
    words = ["the", "cat", "sat", "on", "mat", "café", "naïve", "über", "dog", "ran"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) for i in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_model(
    cell: str,
    layers: int = 2,
    dropout: float = 0.0,
    V: int = 7,
    H: int = 5,
    seed: int = 0,
    scale: float = 3.0,
    **regularisers: Any,
) -> CharRNN:
    """A float64 model with weights large enough that every nonlinearity is exercised;
    `regularisers`: other `Regularisers` fields (output_dropout, locked_dropout, weight_drop)."""
    shape = ModelShape(vocab_size=V, cell=cell, hidden_size=H, num_layers=layers)
    params = init_params(shape, np.random.default_rng(seed), np.dtype(np.float64))
    for p in params.values():
        p *= scale
    return CharRNN(shape, params, Regularisers(dropout=dropout, **regularisers))


class Recorder:
    """A scheduler job's `emit`: the events it got, and a flag set at its end."""

    def __init__(self, name: str = "", timeline: list | None = None) -> None:
        self.events: list[tuple] = []
        self.done = threading.Event()
        self.name, self.timeline = name, timeline  # a timeline shared by jobs: (name, event) in order

    def __call__(self, event: tuple) -> None:
        self.events.append(event)
        if self.timeline is not None:
            self.timeline.append((self.name, event))
        if event[0] == "done":
            self.done.set()

    @property
    def reason(self) -> str:
        return self.events[-1][1]

    @property
    def streamed(self) -> str:
        return "".join(event[1] for event in self.events if event[0] == "text")


def run_jobs(jobs: list) -> None:
    """Every `charrnn.scheduler.Job` (each with a `Recorder` as its emit) through one scheduler
    thread, together, to its end."""
    from charrnn.scheduler import Scheduler

    scheduler = Scheduler()
    scheduler.start()
    scheduler.submit(jobs)
    try:
        for job in jobs:
            assert job.emit.done.wait(60), "a job never ended"
    finally:
        scheduler.stop()
        scheduler.join(10)


NAMES = ["alice", "albert", "bob", "bonnie", "carol", "carl", "dave", "dora"] * 60


def train_names(folder: Path, steps: int) -> Path:
    """`folder/names`: the TINY model trained `steps` steps on a list of names (the server's tests)."""
    (folder / "names.txt").write_text("\n".join(NAMES) + "\n")
    proc = run_cli("train", "names.txt", "-o", "names", *TINY, "--steps", str(steps), "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder
