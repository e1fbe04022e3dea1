"""Checkpoints (`charrnn.checkpoint`): round trips, and every broken or hostile file refused in one
line before anything large is allocated."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn import checkpoint
from charrnn.atomic import atomic_write
from charrnn.config import Config
from charrnn.errors import CheckpointError
from charrnn.model import Regularisers
from charrnn.train import new_state, resume_state
from charrnn.vocab import Vocab


def saved(tmp_path: Path, cell: str = "lstm") -> Path:
    config = Config()
    config.model.cell, config.model.hidden_size = cell, 8
    state = new_state(config, Vocab.from_chars("abc\n"))
    path = tmp_path / "model.npz"
    checkpoint.save(path, state.to_checkpoint())
    return path


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_round_trip_keeps_every_array_and_meta(tmp_path: Path, cell: str) -> None:
    config = Config()
    config.model.cell = cell
    state = new_state(config, Vocab.from_chars("héllo\n"))
    path = tmp_path / "m.npz"
    checkpoint.save(path, state.to_checkpoint())
    loaded = checkpoint.load(path)
    for name, p in state.engine.state().params.items():
        np.testing.assert_array_equal(loaded.params[name], p)
        assert loaded.params[name].dtype == np.float32
    assert loaded.vocab == state.vocab
    assert loaded.meta["format_version"] == checkpoint.FORMAT_VERSION
    assert loaded.meta["model"]["cell"] == cell and loaded.meta["step"] == 0
    with np.load(path, allow_pickle=False) as archive:  # documented names
        assert "param.layers.0.W_xh" in archive.files and "param.W_hy" in archive.files


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_corrupt_bytes_are_a_clear_error(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xa5" * 64  # the optimizer state is zeros: use non-zero
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"not an \.npz"):
        checkpoint.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="no meta"):
        checkpoint.load(other)


def test_pickle_bearing_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled"):
        checkpoint.load(path)


def _rewrite(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_shapes_and_dtypes_are_validated_against_meta(tmp_path: Path) -> None:
    path = saved(tmp_path)
    _rewrite(path, lambda a: a.__setitem__("param.W_hy", np.zeros((3, 3), np.float32)))
    with pytest.raises(CheckpointError, match="W_hy has shape"):
        checkpoint.load(path)
    path = saved(tmp_path)
    _rewrite(path, lambda a: a.__setitem__("param.b_y", a["param.b_y"].astype(np.float64)))
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.load(path)


def test_meta_from_a_future_format_is_refused(tmp_path: Path) -> None:
    path = saved(tmp_path)

    def bump(arrays: dict) -> None:
        meta = json.loads(arrays["meta"].tobytes())
        meta["format_version"] = 99
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    _rewrite(path, bump)
    with pytest.raises(CheckpointError, match="format version 99"):
        checkpoint.load(path)


def test_failed_write_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    path = saved(tmp_path)
    before = path.read_bytes()

    def explode(f) -> None:
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="No space left"):
        atomic_write(path, explode)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_a_small_file_declaring_a_huge_array_is_refused_before_any_allocation(tmp_path: Path, corpus: Path) -> None:
    """A 4.7 MB checkpoint whose param.b_y declares 2^28 float32 (1 GiB of zeros, compressed):
    refused from its header under a 1 GiB address-space limit, naming the entry and both shapes."""
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "2", "-q", cwd=tmp_path).returncode == 0
    good = tmp_path / "run" / "best.npz"
    hostile = tmp_path / "hostile.npz"
    n = 2**28
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(hostile, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename != "param.b_y.npy":
                dst.writestr(info.filename, src.read(info))
        with dst.open("param.b_y.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(1 << 24)
            for _ in range(n * 4 // len(zeros)):
                f.write(zeros)
    assert hostile.stat().st_size < 8_000_000
    limit = _limit_memory(1 << 30)
    ok = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-m", str(good), "-n", "5"], cwd=tmp_path,
                        capture_output=True, preexec_fn=limit)  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()  # the limit leaves room for a normal load
    proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-m", str(hostile), "-n", "5"], cwd=tmp_path,
                          capture_output=True, preexec_fn=limit)  # fmt: skip
    vocab_size = len(checkpoint.load(good).vocab)
    assert_clean_error(proc, 1, "param.b_y", f"({n},)", f"({vocab_size},)")


def test_corrupt_checkpoint_given_to_sample_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(200))
    assert_clean_error(run_cli("sample", "-m", str(bad), cwd=tmp_path), 1, "bad.npz")


def test_sample_refuses_a_pickle_bearing_npz_in_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", meta=np.array([print], dtype=object))
    assert_clean_error(run_cli("sample", "-m", "evil.npz", cwd=tmp_path), 1, "pickle")


def _limit_memory(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_run_progress_is_saved_and_read_back_by_field_name(tmp_path: Path) -> None:
    """Every field of RunProgress goes into the meta under its name and comes back as it was:
    adding a field to the dataclass is all a new piece of progress needs."""
    state = new_state(Config(), Vocab.from_chars("abc\n"))
    values = {"step": 7, "cursor": 3, "best_val_loss": 1.25, "evals_since_best": 2, "val_fingerprint": "9:0000abcd"}
    values |= {"lr_horizon": 40, "planned_passes": 12.5}
    assert set(values) == {f.name for f in dataclasses.fields(checkpoint.RunProgress)}
    state.progress = checkpoint.RunProgress(**values)
    path = tmp_path / "m.npz"
    checkpoint.save(path, state.to_checkpoint())
    loaded = checkpoint.load(path)
    assert loaded.progress == state.progress
    assert {name: loaded.meta[name] for name in values} == values


def test_a_checkpoint_from_before_the_newer_fields_loads_and_resumes(tmp_path: Path) -> None:
    """A checkpoint written before `lr_horizon`, `torch_rng`, `planned_passes` and the
    regularisers other than dropout: they take their defaults, and training resumes from it."""
    config = Config()
    config.model.hidden_size = 8
    ckpt = new_state(config, Vocab.from_chars("abc\n")).to_checkpoint()
    for name in ("lr_horizon", "torch_rng", "planned_passes"):
        del ckpt.meta[name]
    old_model = {k: ckpt.meta["model"][k] for k in ("vocab_size", "cell", "hidden_size", "num_layers", "dropout")}
    ckpt.meta["model"] = old_model
    for key in ("output_dropout", "locked_dropout", "weight_drop", "by_passes"):
        del ckpt.meta["config"]["model"][key]
    path = tmp_path / "old.npz"
    checkpoint.save(path, ckpt)
    loaded = checkpoint.load(path)
    assert loaded.progress == checkpoint.RunProgress()
    assert loaded.regularisers == Regularisers() and loaded.engine_state().torch_rng is None
    resumed = resume_state(loaded, loaded.config, loaded.vocab)
    assert resumed.progress.planned_passes is None and resumed.engine.state().optimizer_t == 0


BAD_GENERATORS = {
    "torch_rng of the wrong size": ("torch_rng", [1, 2, 3]),
    "torch_rng of the wrong type": ("torch_rng", "abc"),
    "torch_rng with values past a byte": ("torch_rng", [300] * 5056),
    "rng that is no numpy state": ("rng", {"bit_generator": "PCG64", "state": "x"}),
    "a negative step": ("step", -1),
    "best_val_loss as a string": ("best_val_loss", "low"),
    "planned_passes as a list": ("planned_passes", [1]),
}


@pytest.mark.parametrize("case", BAD_GENERATORS)
def test_generator_states_and_progress_are_checked_when_read(tmp_path: Path, case: str) -> None:
    """A value no engine could take is refused on load, naming it (so `train` falls back to
    best.npz), instead of failing deep inside an engine or being written on."""
    key, value = BAD_GENERATORS[case]
    ckpt = new_state(Config(), Vocab.from_chars("abc\n")).to_checkpoint()
    ckpt.meta[key] = value
    path = tmp_path / "m.npz"
    checkpoint.save(path, ckpt)
    with pytest.raises(CheckpointError, match=key):
        checkpoint.load(path)
