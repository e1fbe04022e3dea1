"""Checkpoints: one `.npz` (no pickle), written atomically, validated on load.

Entries: `meta` (UTF-8 JSON as uint8 bytes), `param.<name>` for every parameter,
`optim.<slot>.<name>` for the optimizer state, `carry` the hidden state carried between
chunks `(L, S, B, H)`. `meta` holds `format`, `format_version`, `vocab` (characters in id
order), `model`, `config`, `dtype`, `step`, `cursor`, `optimizer_t`, `rng`, `best_val_loss`,
`evals_since_best` and `val_fingerprint`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from charrnn.config import Config, config_from_dict
from charrnn.errors import CharRNNError, UsageError
from charrnn.model import CharRNN, ModelShape
from charrnn.optim import SLOTS
from charrnn.vocab import Vocab

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
LATEST, BEST = "latest.npz", "best.npz"


class CheckpointError(CharRNNError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, foreign or inconsistent."""


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file in the same directory, fsync, then rename over it.

    Whatever fails (disk full, read-only directory, a signal), the old file is left as it was.
    """
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            write(tmp)
            os.fchmod(tmp.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise CharRNNError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write a checkpoint atomically."""
    meta = dict(ckpt.meta, format=FORMAT, format_version=FORMAT_VERSION)
    arrays = {"meta": np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8)}
    arrays.update({f"param.{k}": v for k, v in ckpt.params.items()})
    arrays.update({f"optim.{k}": v for k, v in ckpt.optim_state.items()})
    if ckpt.carry is not None:
        arrays["carry"] = ckpt.carry
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"no such checkpoint: {path}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a charrnn checkpoint (not an .npz archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # np.load does not check the CRCs; a flipped byte would load
        if bad is not None:
            raise CheckpointError(f"{path} is corrupt: entry {bad} fails its checksum")
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as err:
        if "pickle" in str(err):
            raise CheckpointError(f"{path} holds pickled objects; refusing to load it") from None
        raise CheckpointError(f"{path} is corrupt: {err}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise CheckpointError(f"{path} is truncated or corrupt: {err}") from None


def read_meta(path: Path) -> dict[str, Any]:
    """Only the `meta` of a checkpoint (no weights are read): for listing runs."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("meta.npy") as f:
            raw = np.lib.format.read_array(f, allow_pickle=False)
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except KeyError:
        raise CheckpointError(f"{path}: not a charrnn checkpoint (no meta)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a charrnn checkpoint")
    return meta


def _expect(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{path}: {what}")


def load(path: Path) -> Checkpoint:
    """Read and validate a checkpoint: every name, shape and dtype against its own meta."""
    arrays = _read_arrays(path)
    _expect("meta" in arrays and arrays["meta"].dtype == np.uint8, path, "not a charrnn checkpoint (no meta)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: meta is not valid JSON") from None
    _expect(isinstance(meta, dict) and meta.get("format") == FORMAT, path, "not a charrnn checkpoint")
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
    except (KeyError, TypeError, ValueError, UsageError) as err:
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
    params = {k.removeprefix("param."): v for k, v in arrays.items() if k.startswith("param.")}
    expected = shape.param_shapes()
    _expect(set(params) == set(expected), path, f"parameters {sorted(params)} do not match the model")
    for name, array in params.items():
        _expect(array.shape == expected[name], path, f"{name} has shape {array.shape}, expected {expected[name]}")
        _expect(array.dtype == dtype, path, f"{name} has dtype {array.dtype}, expected {dtype}")
        _expect(bool(np.isfinite(array).all()), path, f"{name} holds NaN or inf")
    optim_state = {k.removeprefix("optim."): v for k, v in arrays.items() if k.startswith("optim.")}
    slots = SLOTS[config.train.optimizer]
    if optim_state:
        want = {f"{slot}.{name}": expected[name] for slot in slots for name in expected}
        _expect(set(optim_state) == set(want), path, "optimizer state does not match the model")
        for key, array in optim_state.items():
            _expect(array.shape == want[key] and array.dtype == dtype, path, f"optimizer state {key} is malformed")
    carry = arrays.get("carry")
    if carry is not None:
        L, S, _, H = shape.state_shape(1)
        _expect(
            carry.ndim == 4 and (carry.shape[0], carry.shape[1], carry.shape[3]) == (L, S, H) and carry.dtype == dtype,
            path,
            f"carried state has shape {carry.shape}, expected ({L}, {S}, B, {H})",
        )
    unknown = set(arrays) - {"carry"} - {f"param.{k}" for k in params} - {f"optim.{k}" for k in optim_state}
    _expect(not unknown, path, f"unexpected entries {sorted(unknown)}")
    return Checkpoint(params=params, meta=meta, optim_state=optim_state, carry=carry)


def find_model(model: str | None, runs_root: Path = Path("runs")) -> Path:
    """The checkpoint that `--model` names: a `.npz`, a run directory (its best, else latest),
    or, when None, the most recently written run under `runs_root`."""
    if model is None:
        candidates = [p for name in (BEST, LATEST) for p in runs_root.glob(f"*/{name}")]
        if not candidates:
            raise UsageError(f"no trained model under {runs_root}/; train one first or pass --model")
        run = max(candidates, key=lambda p: p.stat().st_mtime).parent
        return find_model(str(run), runs_root)
    path = Path(model)
    if path.is_dir():
        for name in (BEST, LATEST):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"no checkpoint in {path} ({BEST} or {LATEST})")
    if not path.exists():
        raise UsageError(f"no such model: {model}")
    return path
