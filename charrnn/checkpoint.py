"""Checkpoints: one `.npz` (no pickle), written atomically, validated on load.

Entries: `meta` (UTF-8 JSON as uint8 bytes), `param.<name>` for every parameter,
`optim.<slot>.<name>` for the optimizer state (none in a run made from given weights, whose
optimizer starts fresh), `carry` the hidden state carried between chunks `(L, S, B, H)`.
`meta` holds `format`, `format_version`, `vocab` (characters in id order), `model` (the
`ModelShape` and the `Regularisers` it trained with), `config`, `dtype`, every field of
`RunProgress` under its own name, and the engine's scalars (`optimizer_t`, `rng`,
`torch_rng`: the fields of `EngineState` that are not arrays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.config import Config, config_from_dict
from charrnn.engine import EngineState
from charrnn.errors import CheckpointError, InvalidUsageError
from charrnn.model import CharRNN, ModelShape, Regularisers
from charrnn.optim import SLOTS
from charrnn.vocab import Vocab

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1


@dataclass
class RunProgress:
    """How far a run has come: what training resumes from besides the arrays and the engine's
    scalars. Saved in a checkpoint's `meta` under each field's name and read back by name (a
    field an older checkpoint lacks takes its default), so a new field is this one edit."""

    step: int = 0  # updates made
    cursor: int = 0  # the next chunk of the epoch
    best_val_loss: float | None = None
    evals_since_best: int = 0
    val_fingerprint: str | None = None  # length and CRC-32 of the validation ids best_val_loss is on
    lr_horizon: int | None = None  # the step a cosine schedule ends at, when --time fixed it
    planned_passes: float | None = None  # the passes over the training text model.by_passes chose for

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RunProgress:
        """The fields in `meta`, each checked against its annotation (ValueError if wrong)."""
        values = {f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta}
        for name, value in values.items():
            kinds = str(cls.__dataclass_fields__[name].type).split(" | ")
            if value is None and "None" in kinds:
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            fits = {"int": number and isinstance(value, int), "float": number, "str": isinstance(value, str)}
            if not any(fits.get(kind, False) for kind in kinds) or (number and not value >= 0):
                raise ValueError(f"{name} is {value!r:.40}, not {' or '.join(kinds)} (and >= 0)")
        return cls(**values)


ENGINE_SCALARS = tuple(
    f.name for f in dataclasses.fields(EngineState) if f.name not in ("params", "optim_state", "carry")
)
TORCH_STATE_BYTES = (5056, 16)  # a torch.Generator's state: on a CPU (mt19937), on CUDA (Philox)


def _check_generators(meta: dict[str, Any]) -> None:
    """`rng` must be a state numpy's generator takes, `torch_rng` null or a torch generator's
    state: bytes (ints in [0, 255]) of a length torch's generators have (ValueError if not)."""
    try:
        np.random.default_rng().bit_generator.state = meta["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise ValueError(f"rng is not a generator state ({err})") from None
    state = meta.get("torch_rng")
    if state is None:
        return
    if not isinstance(state, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in state):
        raise ValueError("torch_rng is not a list of bytes")
    if not all(0 <= b < 256 for b in state) or len(state) not in TORCH_STATE_BYTES:
        raise ValueError(f"torch_rng is not a torch generator's state ({TORCH_STATE_BYTES} bytes)")


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    meta: dict[str, Any]
    optim_state: dict[str, np.ndarray]
    carry: np.ndarray | None

    @classmethod
    def of(cls, config: Config, vocab: Vocab, progress: RunProgress, engine: EngineState) -> Checkpoint:
        """A run's checkpoint: its config and vocabulary, its progress, its engine's contents.
        `model` is the model as trained: with the regularisers model.by_passes chose for
        `progress.planned_passes`."""
        model = config.model.for_passes(progress.planned_passes)
        meta = {
            "vocab": list(vocab.chars),
            "model": vars(model.shape(len(vocab))) | vars(model.regularisers()),
            "config": config.to_dict(),
            "dtype": config.train.dtype,
            **dataclasses.asdict(progress),
            **{name: getattr(engine, name) for name in ENGINE_SCALARS},
        }
        return cls(engine.params, meta, engine.optim_state, engine.carry)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.meta["vocab"])

    @property
    def config(self) -> Config:
        return config_from_dict(self.meta["config"])

    @property
    def shape(self) -> ModelShape:
        return _fields_of(ModelShape, self.meta["model"])

    @property
    def regularisers(self) -> Regularisers:
        """The regularisers the model trained with last (none of an older checkpoint: 0)."""
        return _fields_of(Regularisers, self.meta["model"])

    @property
    def progress(self) -> RunProgress:
        return RunProgress.from_meta(self.meta)

    def engine_state(self) -> EngineState:
        """The arrays and the engine's scalars, for an engine to continue from."""
        scalars = {name: self.meta.get(name) for name in ENGINE_SCALARS}
        return EngineState(self.params, self.optim_state, carry=self.carry, **scalars)

    def model(self) -> CharRNN:
        return CharRNN(self.shape, self.params)


def _fields_of(kind: Any, values: dict[str, Any]) -> Any:
    """A `kind` dataclass from the entries of `values` that name its fields."""
    return kind(**{f.name: values[f.name] for f in dataclasses.fields(kind) if f.name in values})


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
        shape = _fields_of(ModelShape, meta["model"])
        step, cursor, optimizer_t = int(meta["step"]), int(meta["cursor"]), int(meta["optimizer_t"])
        RunProgress.from_meta(meta)
        _check_generators(meta)
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
