"""Experiment tracking (`charrnn.tracking`): TensorBoard event files read back with
TensorBoard's own reader and compared with metrics.jsonl, a resumed run's curves, the
directory form, rank 0 alone under torchrun, and a missing extra; a W&B run kept offline,
read back from its .wandb files with W&B's own record format."""

from __future__ import annotations

import json
import shutil
import struct
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
    assert set(events.Tags()["scalars"]) == {"train/loss", "val/loss", "lr", "chars_per_sec", "mfu"}
    every = {tag: {e["step"]: e[key] for e in lines} for tag, key in (("lr", "lr"), ("mfu", "mfu"))}
    for tag, expected in [("train/loss", train), ("val/loss", val), *every.items()]:
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


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's header (`:W&B`, a magic number, a version), then
    LevelDB's log format (32 KiB blocks of chunks: crc32c, length, type) around W&B's own
    protobuf `Record`s, decoded with W&B's generated classes."""
    wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # a whole record
            records.append(chunk)
        elif kind in (2, 3):  # its first or a middle piece
            pending = chunk if kind == 2 else pending + chunk
        elif kind == 4:  # its last piece
            records.append(pending + chunk)
    return [wandb_pb.Record.FromString(record) for record in records]


def test_a_wandb_run_kept_offline_holds_what_metrics_jsonl_holds_and_a_resume_continues_it(corpus: Path) -> None:
    pytest.importorskip("wandb")
    offline = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for _ in range(2):  # 8 steps, then 8 more resumed
        proc = run_cli("train", "c.txt", "-o", "run", *RUN, "--wandb", "proj", "--steps", "8", cwd=corpus, env=offline)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout == b""  # W&B's console capture is off: standard output stays clean
    files = sorted((corpus / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    history, runs = {}, []
    for file in files:
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                history[record.history.step.num] = items
            elif kind == "run":
                runs.append(record.run)
    run_id = (corpus / "run" / "wandb-id").read_text()
    assert [(r.run_id, r.project) for r in runs] == [(run_id, "proj")] * 2  # one W&B run, resumed
    config = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config["model"]["hidden_size"] == 16 and config["log"]["wandb"] == "proj"
    lines = read_metrics(corpus / "run" / "metrics.jsonl")
    assert sorted(history) == [line["step"] for line in lines] == [2, 4, 6, 8, 10, 12, 14, 16]
    for line in lines:
        logged = history[line["step"]]
        assert logged["train/loss"] == pytest.approx(line["train_loss"], rel=1e-9)
        assert logged["lr"] == pytest.approx(line["lr"], rel=1e-9)
        assert logged["mfu"] == pytest.approx(line["mfu"], rel=1e-9)
        assert logged.get("val/loss") == (pytest.approx(line["val_loss"], rel=1e-9) if "val_loss" in line else None)


def test_wandb_refuses_bad_projects_and_says_how_to_install_it(corpus: Path) -> None:
    for bad in ("a/b", " ", "x" * 129):
        proc = run_cli("train", "c.txt", "-o", "r", *RUN, "-s", f"log.wandb={bad}", cwd=corpus)
        assert_clean_error(proc, 2, "log.wandb")
    code = "import sys; sys.modules['wandb'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "c.txt", "-o", "run", *RUN, "--wandb", "p", "--steps", "2"],
        cwd=corpus,
        capture_output=True,
    )
    assert_clean_error(proc, 1, "pip install 'charrnn[wandb]'")
