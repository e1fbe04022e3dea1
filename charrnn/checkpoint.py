"""Checkpoints: one `.npz` (no pickle), written atomically, validated on load.

Entries: `meta` (UTF-8 JSON as uint8 bytes), `param.<name>` for every parameter,
`optim.<slot>.<name>` for the optimizer state (none in a run made from given weights, whose
optimizer starts fresh), `carry` the hidden state carried between
chunks `(L, S, B, H)`. `meta` holds `format`, `format_version`, `vocab` (characters in id
order), `model`, `config`, `dtype`, `step`, `cursor`, `optimizer_t`, `rng`, `best_val_loss`,
`evals_since_best`, `val_fingerprint`, `lr_horizon`, `torch_rng` (the torch engine's generator)
and `planned_passes` (what `model.by_passes` chose the regularisers for).
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.config import Config, config_from_dict
from charrnn.errors import CheckpointError, InvalidUsageError
from charrnn.model import CharRNN, ModelShape
from charrnn.optim import SLOTS
from charrnn.vocab import Vocab

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    meta: dict[str, Any]
    optim_state: dict[str, np.ndarray]
    carry: np.ndarray | None

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.meta["vocab"])

    @property
    def config(self) -> Config:
        return config_from_dict(self.meta["config"])

    @property
    def shape(self) -> ModelShape:
        return ModelShape(**self.meta["model"])

    def model(self) -> CharRNN:
        return CharRNN(self.shape, self.params)


def training_meta(
    config: Config,
    vocab: Vocab,
    rng_state: dict[str, Any],
    step: int = 0,
    cursor: int = 0,
    optimizer_t: int = 0,
    best_val_loss: float | None = None,
    evals_since_best: int = 0,
    val_fingerprint: str | None = None,
    lr_horizon: int | None = None,
    torch_rng: list[int] | None = None,
    planned_passes: float | None = None,
) -> dict[str, Any]:
    """The `meta` of a checkpoint (see the module docstring); the defaults are a run's start.
    `model` is the shape as trained: with the regularisers model.by_passes chose for
    `planned_passes`."""
    return {
        "vocab": list(vocab.chars),
        "model": vars(config.model.for_passes(planned_passes).shape(len(vocab))),
        "config": config.to_dict(),
        "dtype": config.train.dtype,
        "step": step,
        "cursor": cursor,
        "optimizer_t": optimizer_t,
        "rng": rng_state,
        "best_val_loss": best_val_loss,
        "evals_since_best": evals_since_best,
        "val_fingerprint": val_fingerprint,
        "lr_horizon": lr_horizon,
        "torch_rng": torch_rng,
        "planned_passes": planned_passes,
    }


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write a checkpoint atomically."""
    meta = dict(ckpt.meta, format=FORMAT, format_version=FORMAT_VERSION)
    arrays = {"meta": np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8)}
    arrays.update({f"param.{k}": v for k, v in ckpt.params.items()})
    arrays.update({f"optim.{k}": v for k, v in ckpt.optim_state.items()})
    if ckpt.carry is not None:
        arrays["carry"] = ckpt.carry
    atomic_write(path, lambda f: np.savez(f, **arrays))


MAX_META_BYTES = 64 << 20  # a vocabulary of every Unicode character fits in a sixth of this
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    """One array of an .npz as its header declares it, before any of its data is read."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int


def _headers(archive: zipfile.ZipFile, path: Path) -> dict[str, _Entry]:
    """Every entry's .npy header (a few hundred bytes each), checked against the zip's declared
    size. No array data is decompressed here."""
    entries = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        _expect(info.filename.endswith(".npy"), path, f"unexpected file {info.filename!r} in the archive")
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            _expect(version in read_header, path, f"entry {name}: unsupported .npy version {version}")
            shape, fortran_order, dtype = read_header[version](f)
            header_bytes = f.tell()
        if dtype.hasobject:
            raise CheckpointError(f"{path} holds pickled objects (entry {name}); refusing to load it")
        size = header_bytes + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        _expect(info.file_size == size, path, f"entry {name} declares {info.file_size} bytes, its header {size}")
        entries[name] = _Entry(info, shape, dtype, fortran_order, header_bytes)
    return entries


def _read_entry(archive: zipfile.ZipFile, entry: _Entry) -> np.ndarray:
    """The array of an entry whose header was checked: one allocation of the declared size, filled
    block by block; reading to the end verifies the zip's CRC-32."""
    array = np.empty(entry.shape, entry.dtype, order="F" if entry.fortran_order else "C")
    flat = memoryview(array.T if entry.fortran_order else array).cast("B")
    with archive.open(entry.info) as f:
        f.read(entry.header_bytes)
        filled = 0
        while filled < len(flat):
            block = f.read(min(_READ_BLOCK, len(flat) - filled))
            if not block:
                raise EOFError("entry ends early")
            flat[filled : filled + len(block)] = block
            filled += len(block)
        if f.read(1):
            raise ValueError("entry is longer than its header says")
    return array


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[zipfile.ZipFile]:
    """The checkpoint as a zip archive, opened once (a writer replacing the file meanwhile does not
    change what is read), with every failure of the file itself as one CheckpointError."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    try:
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{path} is not a charrnn checkpoint (not an .npz archive)")
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            yield archive
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"{path} is truncated or corrupt: {err}") from None
    finally:
        f.close()


def _meta(archive: zipfile.ZipFile, entries: dict[str, _Entry], path: Path) -> dict[str, Any]:
    entry = entries.get("meta")
    _expect(
        entry is not None and entry.dtype == np.uint8 and len(entry.shape) == 1,
        path,
        "not a charrnn checkpoint (no meta)",
    )
    _expect(entry.shape[0] <= MAX_META_BYTES, path, f"meta of {entry.shape[0]} bytes is implausibly large")
    try:
        meta = json.loads(_read_entry(archive, entry).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: meta is not valid JSON") from None
    _expect(isinstance(meta, dict) and meta.get("format") == FORMAT, path, "not a charrnn checkpoint")
    return meta


def read_meta(path: Path) -> dict[str, Any]:
    """Only the `meta` of a checkpoint (no weights are read): for listing runs."""
    with _open_archive(path) as archive:
        return _meta(archive, _headers(archive, path), path)


def _expect(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{path}: {what}")


def load(path: Path) -> Checkpoint:
    """Read and validate a checkpoint. Every entry's name, shape and dtype is checked against the
    meta from the .npy headers alone, before any array data is decompressed or allocated: a small
    file that declares a huge array costs nothing. Then the arrays are read, CRCs verified."""
    with _open_archive(path) as archive:
        entries = _headers(archive, path)
        meta = _meta(archive, entries, path)
        want = _expected_entries(meta, entries, path)
        arrays = {name: _read_entry(archive, entries[name]) for name in want}
    params = {k.removeprefix("param."): v for k, v in arrays.items() if k.startswith("param.")}
    for name, array in params.items():
        _expect(bool(np.isfinite(array).all()), path, f"{name} holds NaN or inf")
    optim_state = {k.removeprefix("optim."): v for k, v in arrays.items() if k.startswith("optim.")}
    return Checkpoint(params=params, meta=meta, optim_state=optim_state, carry=arrays.get("carry"))


def _expected_entries(meta: dict[str, Any], entries: dict[str, _Entry], path: Path) -> list[str]:
    """Check every entry's header against the meta; return the names of the arrays to read."""
    _expect(
        meta.get("format_version") == FORMAT_VERSION,
        path,
        f"format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})",
    )
    try:
        vocab = Vocab(meta["vocab"])
        config = config_from_dict(meta["config"])
        shape = ModelShape(**meta["model"])
        step, cursor, optimizer_t = int(meta["step"]), int(meta["cursor"]), int(meta["optimizer_t"])
    except (KeyError, TypeError, ValueError, InvalidUsageError) as err:
        raise CheckpointError(f"{path}: inconsistent meta ({err})") from None
    _expect(min(step, cursor, optimizer_t) >= 0, path, "negative step or cursor")
    _expect(shape.vocab_size == len(vocab), path, "vocab size does not match the model")
    _expect(
        (shape.cell, shape.hidden_size, shape.num_layers)
        == (config.model.cell, config.model.hidden_size, config.model.num_layers),
        path,
        "model does not match its config",
    )
    dtype = np.dtype(config.train.dtype)
    expected = {f"param.{name}": size for name, size in shape.param_shapes().items()}
    params = {name for name in entries if name.startswith("param.")}
    _expect(params == set(expected), path, f"parameters {sorted(params)} do not match the model")
    optim = {name for name in entries if name.startswith("optim.")}
    if optim:
        slots = SLOTS[config.train.optimizer]
        optim_expected = {f"optim.{slot}.{n}": size for slot in slots for n, size in shape.param_shapes().items()}
        _expect(optim == set(optim_expected), path, "optimizer state does not match the model")
        expected |= optim_expected
    if "carry" in entries:
        expected["carry"] = shape.state_shape(config.train.batch_size)
    unknown = set(entries) - set(expected) - {"meta"}
    _expect(not unknown, path, f"unexpected entries {sorted(unknown)}")
    for name, size in expected.items():
        entry = entries[name]
        label = name.removeprefix("param.")
        _expect(entry.shape == size, path, f"entry {name}: {label} has shape {entry.shape}, expected {size}")
        _expect(entry.dtype == dtype, path, f"entry {name}: {label} has dtype {entry.dtype}, expected {dtype}")
    return list(expected)
