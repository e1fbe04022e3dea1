"""Experiment tracking (`charrnn.tracking`): TensorBoard event files read back with
TensorBoard's own reader and compared with metrics.jsonl, a resumed run's curves, the
directory form, rank 0 alone under torchrun, and a missing extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn.metrics import read_metrics

accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TEXT = "the cat sat on the mat\nand the dog ran to the cat\n" * 40
RUN = [*TINY, "-s", "train.log_every=2", "-s", "train.eval_every=4", "-q"]


def _read(log_dir: Path) -> accumulator.EventAccumulator:
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={accumulator.SCALARS: 0, accumulator.TENSORS: 0})
    events.Reload()
    return events


def _scalars(events: accumulator.EventAccumulator, tag: str) -> dict[int, float]:
    return {point.step: point.value for point in events.Scalars(tag)}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "c.txt").write_text(TEXT)
    return tmp_path


def test_the_event_files_hold_what_metrics_jsonl_holds(corpus: Path) -> None:
    proc = run_cli("train", "c.txt", "-o", "run", *RUN, "--tensorboard", "--steps", "12", cwd=corpus)
    assert proc.returncode == 0, proc.stderr.decode()
    events = _read(corpus / "run" / "tensorboard")
    lines = list(read_metrics(corpus / "run" / "metrics.jsonl"))
    train = {line["step"]: line["train_loss"] for line in lines if line["train_loss"] is not None}
    val = {line["step"]: line["val_loss"] for line in lines if "val_loss" in line}
    assert set(events.Tags()["scalars"]) == {"train/loss", "val/loss", "lr", "chars_per_sec"}
    for tag, expected in [("train/loss", train), ("val/loss", val), ("lr", {e["step"]: e["lr"] for e in lines})]:
        got = _scalars(events, tag)
        assert got.keys() == expected.keys() and len(got) >= 3, tag
        np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-6)
    config = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "hidden_size: 16" in config and "tensorboard: true" in config


def test_a_resumed_run_continues_its_curves_without_doubling_back(corpus: Path) -> None:
    """8 steps; then 8 more that a crash loses before their checkpoint (latest.npz put back at
    step 8); then the same 8 again: each step appears once, with the resumed values."""
    assert run_cli("train", "c.txt", "-o", "run", *RUN, "--tensorboard", "--steps", "8", cwd=corpus).returncode == 0
    saved = (corpus / "run" / "latest.npz").read_bytes()
    assert run_cli("train", "c.txt", "-o", "run", *RUN, "--tensorboard", "--steps", "8", cwd=corpus).returncode == 0
    (corpus / "run" / "latest.npz").write_bytes(saved)  # as if the checkpoints of steps 12 and 16 were lost
    shutil.copy(corpus / "run" / "latest.npz", corpus / "run" / "best.npz")
    proc = run_cli("train", "c.txt", "-o", "run", *RUN, "--tensorboard", "--steps", "8", cwd=corpus)
    assert proc.returncode == 0, proc.stderr.decode()
    points = _read(corpus / "run" / "tensorboard").Scalars("train/loss")
    steps = [point.step for point in points]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12, 14, 16]
    last = [line for line in read_metrics(corpus / "run" / "metrics.jsonl") if line["train_loss"] is not None][-4:]
    np.testing.assert_allclose([p.value for p in points[-4:]], [line["train_loss"] for line in last], rtol=1e-6)


def test_a_directory_holds_each_run_under_its_name(corpus: Path) -> None:
    for name in ("first", "second"):
        proc = run_cli("train", "c.txt", "-o", name, *RUN, "-s", "log.tensorboard=tb", "--steps", "4", cwd=corpus)
        assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in (corpus / "tb").iterdir()) == ["first", "second"]
    assert _scalars(_read(corpus / "tb" / "second"), "train/loss").keys() == {2, 4}
    assert not (corpus / "first" / "tensorboard").exists()


def test_off_by_default_and_bad_values_refused(corpus: Path) -> None:
    assert run_cli("train", "c.txt", "-o", "run", *RUN, "--steps", "2", cwd=corpus).returncode == 0
    assert not (corpus / "run" / "tensorboard").exists()
    assert_clean_error(
        run_cli("train", "c.txt", "-o", "r2", *RUN, "-s", "log.tensorboard=5", cwd=corpus), 2, "log.tensorboard"
    )
    assert_clean_error(
        run_cli("train", "c.txt", "-o", "r2", *RUN, "-s", "log.tensorboard= ", cwd=corpus), 2, "log.tensorboard"
    )


def test_without_the_extra_it_is_one_line(corpus: Path) -> None:
    code = "import sys; sys.modules['tensorboard'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "c.txt", "-o", "run", *RUN, "--tensorboard", "--steps", "2"],
        cwd=corpus,
        capture_output=True,
    )
    assert_clean_error(proc, 1, "pip install 'charrnn[tensorboard]'")


def test_under_torchrun_rank_0_alone_writes_events(corpus: Path) -> None:
    pytest.importorskip("torch")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "charrnn"]
    torch_run = [*RUN, "-s", "train.engine=torch", "-s", "train.batch_size=8", "--tensorboard", "--steps", "4"]
    proc = subprocess.run(
        [*command, "train", "c.txt", "-o", "run", *torch_run], cwd=corpus, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    files = list((corpus / "run" / "tensorboard").iterdir())
    assert len(files) == 1 and _scalars(_read(corpus / "run" / "tensorboard"), "train/loss").keys() == {2, 4}
