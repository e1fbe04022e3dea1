"""The torch engine (`charrnn.torch_engine`) and data parallel under a real torchrun
(`charrnn.distributed`): the same training as the numpy engine, step for step, and the same
runs, checkpoints and behaviour."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn import checkpoint
from charrnn.config import build_config
from charrnn.data import Batcher
from charrnn.train import TrainState, new_state, resume_state, train_step
from charrnn.vocab import Vocab

torch = pytest.importorskip("torch")

TEXT = "the cat sat on the mat. the dog ran after it! " * 40
VOCAB = Vocab.from_chars(TEXT)
IDS = VOCAB.encode(TEXT)
HARD = {  # everything that touches an update at once
    "weight_decay": 0.1,
    "grad_clip": 0.5,
    "warmup_steps": 2,
    "lr_schedule": "cosine",
    "min_lr": 0.001,
    "max_steps": 8,
    "lr": 0.02,
}


def _state(engine: str, cell: str, optimizer: str, **train: object) -> TrainState:
    model = {"cell": cell, "hidden_size": 8, "num_layers": 2}
    train = {"dtype": "float64", "engine": engine, "optimizer": optimizer, "batch_size": 4, "seq_len": 5, **train}
    return new_state(build_config([{"model": model, "train": train}]), VOCAB)


def _steps(state: TrainState, n: int) -> TrainState:
    batcher = Batcher(IDS, state.config.train.batch_size, state.config.train.seq_len)
    for _ in range(n):
        train_step(state, batcher)
    return state


def _rel(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-300)) for k in a)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "sgd"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_steps_equal_numpy_steps_in_float64(cell: str, optimizer: str) -> None:
    """8 steps with weight decay, clipping, warm-up and cosine: every weight, every optimizer
    moment and the carried state agree to 1e-9 relative."""
    ours = _steps(_state("numpy", cell, optimizer, **HARD), 8).to_checkpoint()
    theirs = _steps(_state("torch", cell, optimizer, **HARD), 8).to_checkpoint()
    assert _rel(theirs.params, ours.params) < 1e-9
    assert _rel(theirs.optim_state, ours.optim_state) < 1e-9
    assert theirs.meta["optimizer_t"] == ours.meta["optimizer_t"] == 8
    np.testing.assert_allclose(theirs.carry, ours.carry, rtol=1e-9, atol=1e-12)


def _pattern(shape: tuple[int, ...], p: float) -> np.ndarray:
    """A fixed inverted-dropout mask of `shape`: what both engines draw, made deterministic."""
    u = (np.arange(int(np.prod(shape))) * 0.6180339887498949 + p) % 1.0
    return (np.floor(u + 1 - p) / (1 - p)).reshape(shape)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_regularisers_mean_the_same_on_both_engines(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout between the layers and before the read-out, locked over the steps, and DropConnect
    on W_hh: with each engine's masks replaced by the same fixed ones (drawn in the same layout),
    8 steps give the same weights to 1e-9."""
    import charrnn.model
    from charrnn.torch_engine import TorchEngine

    def numpy_mask(out: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
        out[...] = _pattern(out.shape, p)
        return out

    monkeypatch.setattr(charrnn.model, "dropout_mask", numpy_mask)
    monkeypatch.setattr(TorchEngine, "_dropout_mask", lambda self, size, p: self._tensor(_pattern(size, p)))
    regularisers = {"dropout": 0.3, "output_dropout": 0.4, "locked_dropout": True, "weight_drop": 0.5}

    def trained(engine: str) -> checkpoint.Checkpoint:
        state = _state(engine, cell, "adam", **HARD)
        config = build_config([state.config.to_dict(), {"model": regularisers}])
        return _steps(new_state(config, VOCAB), 8).to_checkpoint()

    ours, theirs = trained("numpy"), trained("torch")
    assert ours.regularisers.weight_drop == 0.5
    assert _rel(theirs.params, ours.params) < 1e-9
    plain = _steps(_state("numpy", cell, "adam", **HARD), 8).to_checkpoint()
    assert _rel(plain.params, ours.params) > 1e-3  # the masks did change the training


@pytest.mark.parametrize(("first", "then"), [("numpy", "torch"), ("torch", "numpy")])
def test_switching_engine_at_resume_equals_not_switching(first: str, then: str) -> None:
    stay = _steps(_state(first, "gru", "adam", **HARD), 8).to_checkpoint()
    half = _steps(_state(first, "gru", "adam", **HARD), 4).to_checkpoint()
    config = build_config([half.meta["config"], {"train": {"engine": then}}])
    switched = _steps(resume_state(half, config, half.vocab), 4).to_checkpoint()
    assert _rel(switched.params, stay.params) < 1e-9 and _rel(switched.optim_state, stay.optim_state) < 1e-9


def test_evaluation_on_torch_equals_numpy() -> None:
    ours, theirs = _steps(_state("numpy", "lstm", "adam"), 3), _steps(_state("torch", "lstm", "adam"), 3)
    assert theirs.engine.evaluate(IDS, 4, 7) == pytest.approx(ours.engine.evaluate(IDS, 4, 7), rel=1e-12)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    ckpt = checkpoint.load(path)
    return {**ckpt.params, **ckpt.optim_state, "carry": ckpt.carry}


def _corpus(folder: Path) -> str:
    (folder / "c.txt").write_text(TEXT)
    return "c.txt"


TORCH = [*TINY, "-s", "train.engine=torch", "-q"]


def test_two_n_steps_equal_n_plus_n_bitwise_with_dropout(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    dropout = ["-s", "model.num_layers=2", "-s", "model.dropout=0.3", "-s", "model.output_dropout=0.2"]
    dropout += ["-s", "model.locked_dropout=true", "-s", "model.weight_drop=0.2", "-s", "train.eval_every=7"]
    assert run_cli("train", corpus, "-o", "once", *TORCH, *dropout, "--steps", "12", cwd=tmp_path).returncode == 0
    for _ in range(2):
        proc = run_cli("train", corpus, "-o", "twice", *TORCH, *dropout, "--steps", "6", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
    once, twice = _arrays(tmp_path / "once/latest.npz"), _arrays(tmp_path / "twice/latest.npz")
    assert once.keys() == twice.keys()
    for name in once:
        np.testing.assert_array_equal(once[name], twice[name], err_msg=name)
    meta = checkpoint.load(tmp_path / "twice/latest.npz").meta
    assert meta["torch_rng"] is not None and meta["config"]["train"]["engine"] == "torch"


def test_by_passes_switches_the_torch_engine_to_the_chosen_rates(tmp_path: Path) -> None:
    """A rule reached by the planned run trains exactly as its rates set directly."""
    corpus = _corpus(tmp_path)
    rates = ["-s", "model.output_dropout=0.4", "-s", "model.weight_drop=0.3"]
    rule = ["-s", "model.by_passes=[{passes: 0.001, output_dropout: 0.4, weight_drop: 0.3}]"]
    for run, settings in (("direct", rates), ("ruled", rule)):
        proc = run_cli("train", corpus, "-o", run, *TORCH, *settings, "--steps", "8", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
    direct, ruled = _arrays(tmp_path / "direct/latest.npz"), _arrays(tmp_path / "ruled/latest.npz")
    for name in direct:
        np.testing.assert_array_equal(ruled[name], direct[name], err_msg=name)


def _torchrun(folder: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*command, "-m", "charrnn", *args], cwd=folder, capture_output=True, timeout=300, env=_quiet_env()
    )


def _torchrun_saving(folder: Path, corpus: str, settings: list[str]) -> subprocess.Popen:
    """torchrun training `run` with 2 processes, returned once it has written a checkpoint."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "charrnn"]
    proc = subprocess.Popen(
        [*command, "train", corpus, "-o", "run", *settings], cwd=folder, stderr=subprocess.PIPE, env=_quiet_env()
    )
    deadline = time.monotonic() + 120
    while not (folder / "run/latest.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def _quiet_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


FLOAT64 = [*TORCH, "-s", "train.dtype=float64", "-s", "train.batch_size=8", "-s", "model.cell=lstm"]


def test_torchrun_with_two_processes_equals_one_process_and_resumes_either_way(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    one = run_cli("train", corpus, "-o", "one", *FLOAT64, "--steps", "20", cwd=tmp_path)
    assert one.returncode == 0, one.stderr.decode()
    two = _torchrun(tmp_path, "train", corpus, "-o", "two", *FLOAT64, "--steps", "20")
    assert two.returncode == 0, two.stderr.decode()
    assert _rel(_arrays(tmp_path / "two/latest.npz"), _arrays(tmp_path / "one/latest.npz")) < 1e-9
    assert b"2 processes" in two.stderr and two.stderr.count(b"done: step 20") == 1  # rank 0 alone talks
    assert len(list((tmp_path / "two").glob("corpus-*.npy"))) == 1  # one encoded corpus, mapped by both ranks
    # 10 steps in one process, then 10 under torchrun; and the other way round
    mixed = [("a", run_cli, _torchrun), ("b", _torchrun, run_cli)]
    for name, first, then in mixed:
        for launch in (first, then):
            if launch is run_cli:
                proc = run_cli("train", corpus, "-o", name, *FLOAT64, "--steps", "10", cwd=tmp_path)
            else:
                proc = _torchrun(tmp_path, "train", corpus, "-o", name, *FLOAT64, "--steps", "10")
            assert proc.returncode == 0, proc.stderr.decode()
        assert _rel(_arrays(tmp_path / name / "latest.npz"), _arrays(tmp_path / "one/latest.npz")) < 1e-9


def test_torchrun_refuses_a_batch_it_cannot_split_and_the_numpy_engine(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    odd = _torchrun(tmp_path, "train", corpus, "-o", "r", *TORCH, "-s", "train.batch_size=5", "--steps", "2")
    assert odd.returncode != 0 and b"charrnn: error: train.batch_size=5 does not divide among 2" in odd.stderr
    assert not re.search(rb'File "[^"]*/charrnn/', odd.stderr)  # torchrun reports the failure; charrnn, one line
    assert b"step 0 -> 2" not in odd.stderr  # refused before training starts
    numpy = _torchrun(tmp_path, "train", corpus, "-o", "r", *TINY, "--steps", "2")
    assert numpy.returncode != 0 and b"needs the torch engine" in numpy.stderr


def test_bad_engine_settings_are_one_line(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    for setting, fragment in (("train.engine=jax", "train.engine"), ("train.device=tpu", "train.device")):
        proc = run_cli("train", corpus, "-o", "r", *TINY, "-s", setting, cwd=tmp_path)
        assert_clean_error(proc, 2, fragment)
    if not torch.cuda.is_available():
        proc = run_cli("train", corpus, "-o", "r", *TORCH, "-s", "train.device=cuda", cwd=tmp_path)
        assert_clean_error(proc, 2, "torch sees no CUDA device")
    code = "import sys; sys.modules['torch'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", corpus, "-o", "r", *TORCH], cwd=tmp_path, capture_output=True
    )
    assert_clean_error(proc, 1, "pip install 'charrnn[torch]'")
    assert not (tmp_path / "r" / "latest.npz").exists()


def test_nan_on_the_torch_engine_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    sgd = [*TORCH, "-s", "train.optimizer=sgd", "-s", "train.eval_every=1000"]
    assert run_cli("train", corpus, "-o", "r", *sgd, "--steps", "2", cwd=tmp_path).returncode == 0
    good = (tmp_path / "r/latest.npz").read_bytes()
    blow = ["-s", "train.lr=1e38", "-s", "train.grad_clip=0", "--steps", "50"]
    proc = run_cli("train", corpus, "-o", "r", *sgd, *blow, cwd=tmp_path)
    assert_clean_error(proc, 1, "not finite", "last good checkpoint")
    assert (tmp_path / "r/latest.npz").read_bytes() == good


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_cuda_trains_the_same_model_as_the_cpu(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    for device in ("cpu", "cuda"):
        proc = run_cli(
            "train", corpus, "-o", device, *TORCH, "-s", f"train.device={device}", "--steps", "20", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr.decode()
    assert _rel(_arrays(tmp_path / "cuda/latest.npz"), _arrays(tmp_path / "cpu/latest.npz")) < 1e-3


def test_under_torchrun_every_rank_stops_together_and_one_checkpoint_is_written(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    long = [*TORCH, "-s", "train.batch_size=8", "-s", "train.max_steps=1000000", "-s", "train.eval_every=20"]
    timed = _torchrun(tmp_path, "train", corpus, "-o", "timed", *long, "--time", "4s")
    assert timed.returncode == 0, timed.stderr.decode()
    assert timed.stderr.count(b"done: step") == 1 and checkpoint.load(tmp_path / "timed/latest.npz").meta["step"] > 0
    proc = _torchrun_saving(tmp_path, corpus, long)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, err = proc.communicate(timeout=120)
    stopped = [line for line in err.decode().splitlines() if line.startswith("charrnn: stopped by SIGTERM")]
    assert len(stopped) == 1, err.decode()  # both ranks stopped at one step; rank 0 said so and saved
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert checkpoint.load(tmp_path / "run/latest.npz").meta["step"] == step


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (a child of `parent`), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_rank_killed_under_torchrun_leaves_one_line_per_rank_and_a_run_that_resumes(tmp_path: Path) -> None:
    """SIGKILL of one process: the others say in one line that a process training with them
    stopped (no traceback of charrnn's), the last checkpoint stays whole, and a rerun resumes."""
    corpus = _corpus(tmp_path)
    long = [*TORCH, "-s", "train.batch_size=8", "-s", "train.max_steps=1000000", "-s", "train.eval_every=20"]
    proc = _torchrun_saving(tmp_path, corpus, long)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode != 0
    assert not re.search(r"File \"[^\"]*/charrnn/", text), text
    ours = [line for line in text.splitlines() if line.startswith("charrnn:")]
    assert len(ours) <= 1 and all("another process training with it has stopped" in line for line in ours), ours
    assert all("pair.cc" not in line for line in ours)  # gloo's source location is not the user's business
    step = checkpoint.load(tmp_path / "run/latest.npz").meta["step"]
    again = run_cli("train", corpus, "-o", "run", *long, "--steps", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert checkpoint.load(tmp_path / "run/latest.npz").meta["step"] == step + 3


def test_a_latest_checkpoint_with_a_bad_torch_generator_falls_back_to_best_in_one_line(tmp_path: Path) -> None:
    """A torch_rng no generator takes (here: the wrong size) is refused when latest.npz is read;
    training resumes from best.npz with one warning, on the torch engine, instead of a traceback."""
    corpus = _corpus(tmp_path)
    assert run_cli("train", corpus, "-o", "run", *TORCH, "--steps", "4", cwd=tmp_path).returncode == 0
    latest = checkpoint.load(tmp_path / "run/latest.npz")
    latest.meta["torch_rng"] = latest.meta["torch_rng"][:100]
    checkpoint.save(tmp_path / "run/latest.npz", latest)
    proc = run_cli("train", corpus, "-o", "run", *TORCH, "--steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    warnings = [line for line in proc.stderr.decode().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "torch_rng" in warnings[0] and "resuming from" in warnings[0]
    assert b"Traceback" not in proc.stderr
    assert checkpoint.load(tmp_path / "run/latest.npz").meta["step"] == 6  # best.npz's 4, and 2 more
