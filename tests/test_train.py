"""Training (`charrnn.train`) never loses work: exact resume, schedules and time budgets, signals,
the lock, NaN, a grown corpus, failed writes. Most tests drive the real CLI in a subprocess.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn import checkpoint
from charrnn import train as train_module
from charrnn.data import Source

LONG = [*TINY, "-s", "train.max_steps=1000000", "-q"]


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files if k != "meta"}


def start_training(tmp_path: Path, corpus: Path, run: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", run, *LONG, *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, timeout: float = 60.0) -> None:
    """Poll until `condition()` holds (the test fails if it never does)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def training_started(run_dir: Path):
    return lambda: (run_dir / "latest.npz").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_is_bitwise_equal(tmp_path: Path, corpus: Path, dtype: str) -> None:
    """2N steps in one invocation == N + N in two: weights, optimizer moments, carried state,
    with every regulariser drawing masks."""
    settings = [
        *TINY,
        "-q",
        "-s",
        f"train.dtype={dtype}",
        "-s",
        "model.cell=lstm",
        "-s",
        "model.num_layers=2",
        "-s",
        "model.dropout=0.3",
        "-s",
        "model.output_dropout=0.2",
        "-s",
        "model.locked_dropout=true",
        "-s",
        "model.weight_drop=0.2",
        "-s",
        "train.eval_every=7",
    ]
    assert run_cli("train", str(corpus), "-o", "once", "--steps", "24", *settings, cwd=tmp_path).returncode == 0
    assert run_cli("train", str(corpus), "-o", "twice", "--steps", "12", *settings, cwd=tmp_path).returncode == 0
    assert run_cli("train", str(corpus), "-o", "twice", "--steps", "12", *settings, cwd=tmp_path).returncode == 0
    once, twice = arrays(tmp_path / "once/latest.npz"), arrays(tmp_path / "twice/latest.npz")
    assert set(once) == set(twice) and any(k.startswith("optim.") for k in once) and "carry" in once
    for name in once:
        assert once[name].dtype == np.dtype(dtype) or name == "carry"
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)
    assert checkpoint.load(tmp_path / "twice/latest.npz").meta["step"] == 24


@pytest.mark.parametrize(
    "schedule",
    [
        ["-s", "train.lr_schedule=constant"],
        ["-s", "train.lr_schedule=step", "-s", "train.lr_decay=0.5", "-s", "train.lr_decay_every=5"],
        ["-s", "train.lr_schedule=cosine", "-s", "train.max_steps=30", "-s", "train.min_lr=1e-4"],
    ],
)
def test_resume_is_bitwise_equal_for_every_schedule_that_ignores_the_clock(
    tmp_path: Path, corpus: Path, schedule: list[str]
) -> None:
    settings = [*TINY, "-q", "-s", "train.warmup_steps=5", "-s", "train.weight_decay=0.1", *schedule]
    assert run_cli("train", str(corpus), "-o", "once", "--steps", "20", *settings, cwd=tmp_path).returncode == 0
    for _ in range(2):
        assert run_cli("train", str(corpus), "-o", "twice", "--steps", "10", *settings, cwd=tmp_path).returncode == 0
    once, twice = arrays(tmp_path / "once/latest.npz"), arrays(tmp_path / "twice/latest.npz")
    for name in once:
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)
    lrs = [json.loads(line).get("lr") for line in (tmp_path / "once/metrics.jsonl").read_text().splitlines()]
    assert len({lr for lr in lrs if lr is not None}) > (1 if "constant" not in schedule[1] else 0)


def test_cosine_with_a_time_budget_fixes_its_horizon_and_keeps_it_on_resume(tmp_path: Path, corpus: Path) -> None:
    settings = [*TINY, "-q", "-s", "train.lr_schedule=cosine", "-s", "train.min_lr=1e-5", "-s", "train.log_every=1"]
    first = run_cli("train", str(corpus), "-o", "run", "--time", "4s", *settings, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    meta = checkpoint.load(tmp_path / "run/latest.npz").meta
    horizon, stopped = meta["lr_horizon"], meta["step"]
    assert "cosine schedule: lr reaches" in first.stderr.decode()
    assert 0.5 * stopped < horizon < 2 * stopped  # the estimate from the first tenth of the budget
    events = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    lrs = [e["lr"] for e in events if "lr" in e]
    assert lrs[-1] < 0.5 * lrs[0] and all(a >= b for a, b in itertools.pairwise(lrs))
    again = run_cli("train", str(corpus), "-o", "run", "--time", "2s", *settings, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert checkpoint.load(tmp_path / "run/latest.npz").meta["lr_horizon"] == horizon  # the same schedule


def test_cosine_horizon_is_max_steps_when_the_budget_allows_more(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake clock: every reading is 1 ms after the last (a step reads it about 5 times), so a
    # budget of 1 s measures the speed near step 20 and would allow about 200 steps:
    # far more than the 40 steps max_steps allows, however fast this machine is.
    ticks = itertools.count()
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: 0.001 * next(ticks)))
    layers = [
        {"model": {"cell": "rnn", "num_layers": 1, "hidden_size": 16}},
        {"train": {"batch_size": 4, "seq_len": 8, "lr_schedule": "cosine", "min_lr": 1e-5, "max_steps": 40}},
        {"train": {"log_every": 1, "eval_every": 10}},
    ]
    result = train_module.train([Source(str(corpus), path=corpus)], tmp_path / "run", layers, time_limit=1.0)
    meta = checkpoint.load(tmp_path / "run/latest.npz").meta
    assert result.step == meta["step"] == 40
    assert meta["lr_horizon"] == 40  # not the step the budget would have allowed
    events = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in events if "lr" in e][-1] == pytest.approx(1e-5)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_saves_then_resume_continues(tmp_path: Path, corpus: Path, sig: int, code: int) -> None:
    proc = start_training(tmp_path, corpus, "run")
    wait_for(training_started(tmp_path / "run"))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    last = err.decode().splitlines()[-1]  # a clean stop, not an error
    assert last.startswith(f"charrnn: stopped by {signal.Signals(sig).name} at step ") and "saved" in last
    assert b"Traceback" not in err and b"error" not in err
    saved = checkpoint.load(tmp_path / "run/latest.npz").meta["step"]
    assert saved > 0
    resumed = run_cli("train", str(corpus), "-o", "run", "--steps", "3", *TINY, "-q", cwd=tmp_path)
    assert resumed.returncode == 0
    assert checkpoint.load(tmp_path / "run/latest.npz").meta["step"] == saved + 3


def test_second_ctrl_c_exits_at_once_without_corrupting_files(tmp_path: Path, corpus: Path) -> None:
    proc = start_training(tmp_path, corpus, "run", "-s", "model.hidden_size=256")
    wait_for(training_started(tmp_path / "run"))
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err
    checkpoint.load(tmp_path / "run/latest.npz")  # whatever happened, the checkpoint is whole
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_overlapping_train_is_refused_with_75_and_a_killed_run_leaves_no_stale_lock(
    tmp_path: Path, corpus: Path
) -> None:
    first = start_training(tmp_path, corpus, "run")
    try:
        wait_for(training_started(tmp_path / "run"))
        second = run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "1", cwd=tmp_path)
        assert_clean_error(second, 75, "in use by pid", str(first.pid))
    finally:
        first.kill()  # SIGKILL: no cleanup at all
        first.wait()
    assert (tmp_path / "run/.lock").exists()
    after = run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "1", "-q", cwd=tmp_path)
    assert after.returncode == 0, after.stderr.decode()


def test_corrupt_or_truncated_latest_falls_back_to_best(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "10", "-q", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    best_step = checkpoint.load(run / "best.npz").meta["step"]
    latest = run / "latest.npz"
    latest.write_bytes(latest.read_bytes()[:1000])
    proc = run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "2", "-q", cwd=tmp_path)
    assert proc.returncode == 0
    assert b"warning" in proc.stderr and b"latest.npz" in proc.stderr
    assert checkpoint.load(latest).meta["step"] == best_step + 2


def test_grown_corpus_extends_the_vocabulary_and_keeps_old_ids(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "5", "-q", cwd=tmp_path).returncode == 0
    before = checkpoint.load(tmp_path / "run/latest.npz")
    with corpus.open("a", encoding="utf-8") as f:
        f.write("ZQ 😀 the cat\n" * 20)
    proc = run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "0", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"vocabulary grew by 3" in proc.stderr and "'😀'".encode() in proc.stderr
    after = checkpoint.load(tmp_path / "run/latest.npz")
    old_v = len(before.vocab)
    assert after.vocab.chars[:old_v] == before.vocab.chars and len(after.vocab) == old_v + 3
    np.testing.assert_array_equal(after.params["layers.0.W_xh"][:old_v], before.params["layers.0.W_xh"])
    np.testing.assert_array_equal(after.params["W_hy"][:, :old_v], before.params["W_hy"])
    np.testing.assert_array_equal(after.optim_state["m.W_hy"][:, :old_v], before.optim_state["m.W_hy"])
    assert not after.optim_state["m.W_hy"][:, old_v:].any()
    more = run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "3", "-q", cwd=tmp_path)
    assert more.returncode == 0
    assert run_cli("sample", "-m", "run", "-p", "😀", "-n", "5", cwd=tmp_path).returncode == 0


def test_changed_model_shape_on_resume_is_an_error(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "2", "-q", cwd=tmp_path).returncode == 0
    proc = run_cli("train", str(corpus), "-o", "run", *TINY, "-s", "model.hidden_size=32", cwd=tmp_path)
    assert_clean_error(proc, 2, "--fresh")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, corpus: Path) -> None:
    settings = [*TINY, "-q", "-s", "train.optimizer=sgd", "-s", "train.eval_every=1000"]
    assert run_cli("train", str(corpus), "-o", "run", "--steps", "2", *settings, cwd=tmp_path).returncode == 0
    good = (tmp_path / "run/latest.npz").read_bytes()
    proc = run_cli(
        "train",
        str(corpus),
        "-o",
        "run",
        "--steps",
        "50",
        *settings,
        "-s",
        "train.lr=1e38",
        "-s",
        "train.grad_clip=0",
        cwd=tmp_path,
    )
    line = assert_clean_error(proc, 1, "not finite")
    assert "latest.npz" in line
    assert (tmp_path / "run/latest.npz").read_bytes() == good


def _read_only_prefix(path: Path) -> list[str]:
    """A command prefix that runs its command with `path` mounted read-only (or skips)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a directory read-only")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root and mount namespaces are not permitted")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", str(path)]


def test_read_only_run_directory_fails_cleanly_and_keeps_the_checkpoint(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "3", "-q", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    prefix = _read_only_prefix(run)
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "charrnn", "train", str(corpus), "-o", "run", *TINY, "--steps", "3"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    run.chmod(0o755)
    assert_clean_error(proc, 1, "not writable")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_full_disk_during_checkpoint_leaves_the_previous_one(tmp_path: Path, corpus: Path) -> None:
    """RLIMIT_FSIZE makes writes past the limit fail (EFBIG) as a full disk would (ENOSPC)."""
    settings = [*TINY, "-s", "model.hidden_size=64", "-q"]
    assert run_cli("train", str(corpus), "-o", "run", "--steps", "3", *settings, cwd=tmp_path).returncode == 0
    latest = tmp_path / "run/latest.npz"
    good = latest.read_bytes()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) // 2, len(good) // 2))

    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", "run", "--steps", "3", *settings],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert_clean_error(proc, 1, "cannot write", "latest.npz")
    assert latest.read_bytes() == good
    assert not [p for p in latest.parent.iterdir() if p.name.endswith(".tmp")]


def test_init_from_starts_a_new_run_from_the_base_weights_with_a_grown_vocabulary(tmp_path: Path, corpus: Path) -> None:
    """One step at lr 1e-30: the fine-tuned run holds the base's weights, the new characters'
    rows appended; its optimizer, step and cursor are its own; run again, it resumes."""
    assert run_cli("train", str(corpus), "-o", "base", *TINY, "-q", "--steps", "6", cwd=tmp_path).returncode == 0
    (tmp_path / "new.txt").write_text(corpus.read_text(encoding="utf-8").replace("cat", "cöt!"), encoding="utf-8")
    tune = ["train", "new.txt", "-o", "ft", "--init-from", "base", "-q", "-s", "train.lr=1e-30", *TINY[6:]]
    proc = run_cli(*tune, "--steps", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "vocabulary grew by 2: '!', 'ö'" in proc.stderr.decode()
    base, ft = checkpoint.load(tmp_path / "base/best.npz"), checkpoint.load(tmp_path / "ft/latest.npz")
    assert ft.vocab.chars[: len(base.vocab)] == base.vocab.chars and len(ft.vocab) == len(base.vocab) + 2
    assert ft.shape == base.shape.__class__(**{**vars(base.shape), "vocab_size": len(base.vocab) + 2})
    for name, weights in base.params.items():
        grown = ft.params[name]
        np.testing.assert_allclose(grown[tuple(slice(0, n) for n in weights.shape)], weights, rtol=1e-6, err_msg=name)
    assert ft.meta["step"] == 1 and ft.meta["optimizer_t"] == 1 and base.meta["step"] == 6
    again = run_cli(*tune, "--steps", "2", cwd=tmp_path)
    assert "resuming it" in again.stderr.decode()
    assert checkpoint.load(tmp_path / "ft/latest.npz").meta["step"] == 3


def test_init_from_a_model_of_another_size_is_one_line(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "base", *TINY, "-q", "--steps", "2", cwd=tmp_path).returncode == 0
    proc = run_cli("train", str(corpus), "-o", "ft", "--init-from", "base", "-s", "model.hidden_size=8", cwd=tmp_path)
    assert_clean_error(proc, 2, "--init-from", "rnn 1x16", "rnn 1x8")
    assert not (tmp_path / "ft" / "latest.npz").exists()
    missing = run_cli("train", str(corpus), "-o", "ft", "--init-from", "nowhere", cwd=tmp_path)
    assert_clean_error(missing, 2, "nowhere")


def test_each_evaluation_records_how_long_it_took(tmp_path: Path, corpus: Path) -> None:
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "-q", "--steps", "25", cwd=tmp_path).returncode == 0
    events = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    evaluations = [e for e in events if "val_loss" in e]
    assert [e["step"] for e in evaluations] == [10, 20, 25]
    assert all(0 < e["eval_seconds"] < e["elapsed"] + 60 for e in evaluations)
    assert all("eval_seconds" not in e for e in events if "val_loss" not in e)


def test_a_final_evaluation_at_a_logged_step_repeats_no_training_loss(tmp_path: Path, corpus: Path) -> None:
    # 25 is on the log grid (5) but not the evaluation grid (10): the loop logs step 25, then the
    # final evaluation writes a second event at 25 with no training steps of its own.
    for steps, logged_at_end in ((25, True), (27, False)):
        run = f"run{steps}"
        proc = run_cli("train", str(corpus), "-o", run, *TINY, "-q", "--steps", str(steps), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        events = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        last = [e for e in events if e["step"] == steps]
        assert len(last) == (2 if logged_at_end else 1) and "val_loss" in last[-1]
        assert sum(e["train_loss"] is not None for e in last) == 1
        assert all(e["train_loss"] is not None for e in events[:-1])


def test_by_passes_trains_a_planned_run_with_the_rates_of_the_passes_it_plans(tmp_path: Path, corpus: Path) -> None:
    """10 steps of 32 characters are ~0.04 passes over this corpus: a rule from 0.01 passes
    trains exactly as those rates set directly, one from 100 passes as the model's own rates;
    the checkpoint records the shape as trained and the plan, and a resumed run keeps them."""

    def weights(run: str, *settings: str, steps: str = "10") -> dict[str, np.ndarray]:
        proc = run_cli("train", str(corpus), "-o", run, *TINY, *settings, "--steps", steps, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        return arrays(tmp_path / run / "latest.npz")

    rates = ["-s", "model.output_dropout=0.5", "-s", "model.weight_drop=0.3"]
    direct, plain = weights("direct", *rates), weights("plain")
    rule = "model.by_passes=[{passes: 0.01, output_dropout: 0.5, weight_drop: 0.3}]"
    for name, expected in (("reached", direct), ("unreached", plain)):
        settings = ["-s", rule if name == "reached" else rule.replace("0.01", "100")]
        got = weights(name, *settings)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name} {key}")
    meta = checkpoint.load(tmp_path / "reached/latest.npz").meta
    n_train = len(corpus.read_text(encoding="utf-8")) - int(0.1 * len(corpus.read_text(encoding="utf-8")))
    assert meta["planned_passes"] == pytest.approx(10 * 32 / n_train, rel=0.01)
    assert (meta["model"]["output_dropout"], meta["model"]["weight_drop"]) == (0.5, 0.3)
    assert meta["config"]["model"]["weight_drop"] == 0.0  # the config as written, rule and all
    for _ in range(2):  # 5 + 5 steps: the first plans ~0.02 passes, and the second keeps that plan
        halves = weights("halves", "-s", rule, steps="5")
    for key in direct:
        np.testing.assert_array_equal(halves[key], direct[key], err_msg=key)
    kept = checkpoint.load(tmp_path / "halves/latest.npz").meta["planned_passes"]
    assert kept == pytest.approx(0.5 * meta["planned_passes"])


def test_by_passes_with_a_time_budget_decides_when_the_budget_measures_its_end(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake clock of the test above: the end (~200 steps) is measured near step 20.
    ticks = itertools.count()
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: 0.001 * next(ticks)))
    rule = {"passes": 0.5, "weight_drop": 0.3}
    layers = [
        {"model": {"cell": "rnn", "num_layers": 1, "hidden_size": 16, "by_passes": [rule]}},
        {"train": {"batch_size": 4, "seq_len": 8, "eval_every": 10}},
    ]
    logs: list[str] = []
    monkeypatch.setattr(train_module.Progress, "log", lambda self, message: logs.append(message))
    result = train_module.train([Source(str(corpus), path=corpus)], tmp_path / "run", layers, time_limit=1.0)
    meta = checkpoint.load(tmp_path / "run/latest.npz").meta
    planned = [line for line in logs if "model.by_passes" in line]
    assert len(planned) == 1 and "weight_drop 0.3" in planned[0] and meta["planned_passes"] > 0.5
    assert meta["model"]["weight_drop"] == 0.3 and result.step > 20
