"""The run directory (`charrnn.rundir`): its two checkpoint rules, its leftovers, a new run made
from given weights, and what a SIGKILL at any moment or readers beside a live writer leave."""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from charrnn import checkpoint
from charrnn.cli import run
from charrnn.config import build_config
from charrnn.errors import InvalidUsageError
from charrnn.model import init_params
from charrnn.rundir import MODEL_ORDER, TRAINING_ORDER, RunDir, create_run, find_model
from charrnn.vocab import Vocab


def invoke(*args: str) -> tuple[int, bytes, str]:
    """The CLI in-process: exit code, stdout bytes, stderr."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(args))
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()


def _new_run(path: Path) -> RunDir:
    config = build_config([{"model": {"cell": "rnn", "hidden_size": 4, "num_layers": 1}, "train": {"seed": 7}}])
    vocab = Vocab.from_chars("ab\n")
    params = init_params(config.model.shape(len(vocab)), np.random.default_rng(0), np.dtype(np.float32))
    return create_run(path, config, vocab, params)


def test_readers_take_best_then_latest_and_train_resumes_latest_then_best(tmp_path: Path) -> None:
    run_dir = _new_run(tmp_path / "run")
    assert find_model(run_dir.path) == run_dir.latest  # only latest.npz so far: both rules take it
    assert run_dir.checkpoints(TRAINING_ORDER) == [run_dir.latest]
    run_dir.best.write_bytes(run_dir.latest.read_bytes())
    assert find_model(run_dir.path) == run_dir.best
    assert run_dir.checkpoints(MODEL_ORDER) == [run_dir.best, run_dir.latest]
    assert run_dir.checkpoints(TRAINING_ORDER) == [run_dir.latest, run_dir.best]
    run_dir.latest.write_bytes(b"PK\x03\x04 cut short")
    warnings: list[str] = []
    assert run_dir.load_training_state(warnings.append) is not None  # from best.npz
    assert len(warnings) == 1 and "resuming from" in warnings[0] and "best.npz" in warnings[0]


def test_a_new_run_from_given_weights_has_no_optimizer_state_and_refuses_a_second(tmp_path: Path) -> None:
    run_dir = _new_run(tmp_path / "run")
    ckpt = checkpoint.load(run_dir.latest)
    assert ckpt.optim_state == {} and ckpt.carry is None and ckpt.meta["step"] == 0
    assert ckpt.meta["rng"] == np.random.default_rng(7).bit_generator.state  # the config's seed
    assert run_dir.config.exists() and not run_dir.best.exists()
    with pytest.raises(InvalidUsageError, match="already holds a checkpoint"):
        _new_run(run_dir.path)


def test_only_the_temporary_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    """A writer killed inside atomic_write leaves its temporary file; remove_leftovers deletes
    exactly such files, for every file a run writes, and nothing else."""
    run_dir = RunDir(tmp_path).create()
    names = ["latest.npz", "best.npz", "config.yaml", "corpus-0123.npy", "corpus-0123.json"]
    script = (
        "import os, signal, sys; from pathlib import Path; from charrnn.atomic import atomic_write\n"
        "atomic_write(Path(sys.argv[1]), lambda f: (f.write(b'half'), os.kill(os.getpid(), signal.SIGKILL)))"
    )
    for name in names:
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], capture_output=True)
        assert proc.returncode == -signal.SIGKILL
    left = _leftovers(tmp_path)
    assert len(left) == len(names) and not any((tmp_path / name).exists() for name in names)
    keep = [tmp_path / "notes.txt", tmp_path / ".notes.txt.1.tmp", tmp_path / "metrics.jsonl"]
    for path in keep:
        path.write_text("mine")
    assert run_dir.remove_leftovers() == len(names)
    assert _leftovers(tmp_path) == [".notes.txt.1.tmp"] and all(path.exists() for path in keep)


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


def test_sigkill_at_any_moment_resumes_from_the_last_complete_checkpoint(tmp_path: Path, corpus: Path) -> None:
    """20 kills at random moments (startup, steps, evaluations, checkpoint writes): after each, the
    run's checkpoint loads and is never older than the one before, sample and eval work, and the
    temporary files of an interrupted write are removed by the next train."""
    rng = random.Random(0)
    args = ["train", str(corpus), "-o", "run", "-s", "model.hidden_size=128", "-s", "model.num_layers=2"]
    args += ["-s", "train.batch_size=8", "-s", "train.seq_len=16", "-s", "train.eval_every=3", "-q"]
    run_dir = tmp_path / "run"
    steps_seen = [0]
    for _ in range(20):
        before = _leftovers(run_dir) if run_dir.exists() else []
        step_before = steps_seen[-1]
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", *args], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(rng.uniform(0.2, 2.2))  # a random moment, not a timing assertion
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        after = _leftovers(run_dir) if run_dir.exists() else []
        assert len(after) <= 1, (before, after)  # a kill leaves at most the one file it was writing
        if not (run_dir / "latest.npz").exists():
            assert steps_seen[-1] == 0  # nothing was ever saved: starting from zero is right
            continue
        step = checkpoint.load(run_dir / "latest.npz").meta["step"]
        assert step >= steps_seen[-1], [*steps_seen, step]
        if step > step_before:  # this train got as far as saving, so it cleaned up first
            assert not set(before) & set(after), (before, after)
        steps_seen.append(step)
        code, out, err = invoke("sample", "-m", str(run_dir), "-n", "20", "--seed", "1")
        assert code == 0 and len(out.decode()) == 20, err
        code, out, err = invoke("eval", "-m", str(run_dir), str(corpus))
        assert code == 0, err
    assert steps_seen[-1] > 0, steps_seen
    finish = subprocess.run([sys.executable, "-m", "charrnn", *args, "--steps", "1"], cwd=tmp_path, capture_output=True)
    assert finish.returncode == 0, finish.stderr.decode()
    assert checkpoint.load(run_dir / "latest.npz").meta["step"] == steps_seen[-1] + 1  # resumed, not restarted
    assert _leftovers(run_dir) == []
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == steps_seen[-1] + 1  # a line cut by a kill does not swallow the next


def test_readers_never_fail_while_train_writes(tmp_path: Path, corpus: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    args = [*TINY, "-s", "model.hidden_size=64", "-s", "train.eval_every=2", "-s", "train.log_every=1"]
    writer = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), "-o", "runs/live", *args,
                               "--time", "25s", "-q"], cwd=tmp_path, stderr=subprocess.PIPE)  # fmt: skip
    live = tmp_path / "runs" / "live"
    try:
        while not (live / "best.npz").exists():
            assert writer.poll() is None, writer.stderr.read().decode()
            time.sleep(0.05)
        readers = {
            "sample": ["sample", "-m", str(live), "-n", "30"],
            "eval": ["eval", "-m", str(live), str(corpus)],
            "score": ["score", "-m", str(live), str(corpus)],
            "runs": ["runs", str(tmp_path / "runs"), "--json"],
            "plot": ["plot", str(live), "-o", str(tmp_path / "p.png")],
            "viz": ["viz", "-m", str(live), str(corpus), "-o", str(tmp_path / "v.html"), "--chars", "300"],
            "export": ["export", "-m", str(live), str(tmp_path / "m.safetensors")],
        }
        rounds = 0
        while writer.poll() is None and rounds < 8:
            for name, reader in readers.items():
                code, _, err = invoke(*reader)
                assert code == 0, (name, err)
            rounds += 1
        assert rounds >= 2
    finally:
        writer.kill()
        writer.wait()
        writer.stderr.close()
