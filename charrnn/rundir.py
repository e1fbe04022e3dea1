"""A run directory: the files `train` writes there, and the rules by which commands read them.

    config.yaml     the resolved config of the last `train`
    latest.npz      the checkpoint where training stopped: weights, optimizer, data cursor, RNG
    best.npz        the checkpoint with the lowest validation loss so far
    metrics.jsonl   one event per line (see `charrnn.metrics`)
    .lock           held by the one process writing here (see `charrnn.runlock`)
    corpus-*.npy, corpus-*.json   the encoded corpus, memory-mapped by later runs (`charrnn.corpus`)

Only a process that holds the lock writes here (`train`, and `create_run` for `charrnn import`),
every file through `charrnn.atomic`; a writer killed meanwhile can leave temporary files
(`TEMPORARY`), which the next writer removes.

Two rules choose a checkpoint:
- **the model** (`sample`, `score`, `eval`, `viz`, `export`, `charrnn.load`): best.npz, else
  latest.npz (`MODEL_ORDER`);
- **the training state** (`train` resumes it, `runs` lists it): latest.npz, else best.npz
  (`TRAINING_ORDER`); when latest.npz cannot be read and best.npz exists, `train` warns and
  resumes from best.npz.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from charrnn import checkpoint
from charrnn.atomic import atomic_write, leftover_pattern
from charrnn.checkpoint import Checkpoint, RunProgress
from charrnn.config import Config
from charrnn.corpus import CACHE_GLOB
from charrnn.engine import EngineState
from charrnn.errors import CharRNNError, CheckpointError, InvalidUsageError
from charrnn.runlock import RunLock, is_locked
from charrnn.vocab import Vocab

CONFIG, LATEST, BEST, METRICS, LOCK = "config.yaml", "latest.npz", "best.npz", "metrics.jsonl", ".lock"
TENSORBOARD = "tensorboard"  # event files, with log.tensorboard: true
MODEL_ORDER = (BEST, LATEST)
TRAINING_ORDER = (LATEST, BEST)
MARKERS = (LATEST, BEST, METRICS, CONFIG)  # any of these makes a directory a run
TEMPORARY = tuple(leftover_pattern(name) for name in (LATEST, BEST, CONFIG, CACHE_GLOB))
DEFAULT_ROOT = Path("runs")


@dataclass(frozen=True)
class RunDir:
    """The run directory at `path` (which need not exist yet)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def latest(self) -> Path:
        return self.path / LATEST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def tensorboard(self, where: bool | str) -> Path:
        """Where `log.tensorboard` puts this run's event files: true, `<run>/tensorboard`; a
        directory D, `D/<run name>` (so that runs logged to one D show as TensorBoard's runs)."""
        return self.path / TENSORBOARD if where is True else Path(where) / self.path.resolve().name

    def checkpoints(self, order: tuple[str, ...]) -> list[Path]:
        """The checkpoints that exist, in the order of a rule (`MODEL_ORDER`, `TRAINING_ORDER`)."""
        return [self.path / name for name in order if (self.path / name).is_file()]

    def is_run(self) -> bool:
        return self.path.is_dir() and any((self.path / name).exists() for name in MARKERS)

    def create(self) -> RunDir:
        """Make the directory (and its parents) if missing."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CharRNNError(f"cannot create run directory {self.path}: {err.strerror or err}") from None
        return self

    def lock(self) -> RunLock:
        """`with run.lock():` the one writer's lock (`BusyError` when another process holds it)."""
        return RunLock(self.path / LOCK)

    def is_training(self) -> bool:
        """Whether a live process holds the lock (read without taking it)."""
        return is_locked(self.path / LOCK)

    def remove_leftovers(self) -> int:
        """Delete the temporary files of writers that were killed; returns how many. Call it
        holding the lock: every such file then belongs to a process that is gone."""
        removed = 0
        for pattern in TEMPORARY:
            for path in self.path.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def load_training_state(self, warn: Callable[[str], None]) -> Checkpoint | None:
        """The checkpoint `train` resumes (the training-state rule), or None in a new run."""
        found = self.checkpoints(TRAINING_ORDER)
        for i, path in enumerate(found):
            try:
                return checkpoint.load(path)
            except CheckpointError as err:
                if i == len(found) - 1:
                    raise
                warn(f"warning: {err}; resuming from {found[i + 1]} instead")
        return None

    def save(self, ckpt: Checkpoint, best: bool) -> None:
        """latest.npz, and best.npz too when `best`."""
        checkpoint.save(self.latest, ckpt)
        if best:
            checkpoint.save(self.best, ckpt)

    def write_config(self, config: Config) -> None:
        text = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
        atomic_write(self.config, lambda f: f.write(text))

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a dict ({} if missing or unreadable): for showing, not for training."""
        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}


def find_model(model: str | Path | None, root: Path = DEFAULT_ROOT) -> Path:
    """The checkpoint that `--model` names: a `.npz` file, a run directory (by the model rule),
    or, when None, the run under `root` whose checkpoint was written last."""
    if model is None:
        runs = [RunDir(p) for p in root.glob("*") if p.is_dir()]
        written = [path for run in runs for path in run.checkpoints(MODEL_ORDER)]
        if not written:
            raise InvalidUsageError(f"no trained model under {root}/; train one first or pass --model")
        return find_model(max(written, key=lambda p: p.stat().st_mtime).parent, root)
    path = Path(model)
    if path.is_dir():
        found = RunDir(path).checkpoints(MODEL_ORDER)
        if not found:
            raise InvalidUsageError(f"no checkpoint in {path} ({BEST} or {LATEST})")
        return found[0]
    if not path.exists():
        raise InvalidUsageError(f"no such model: {model}")
    return path


def create_run(path: Path, config: Config, vocab: Vocab, params: dict[str, np.ndarray]) -> RunDir:
    """A new run whose latest.npz holds these weights at step 0, with no optimizer state (a
    fresh one starts when it trains) and the config's seed for everything random: `train`
    continues it; `sample` and `eval` use it. A directory that holds a checkpoint is refused."""
    run = RunDir(path).create()
    with run.lock():
        if run.checkpoints(MODEL_ORDER):
            raise InvalidUsageError(f"{path} already holds a checkpoint; choose another directory")
        rng_state = np.random.default_rng(config.train.seed).bit_generator.state
        engine = EngineState(params, {}, 0, None, rng_state)
        run.save(Checkpoint.of(config, vocab, RunProgress(), engine), best=False)
        run.write_config(config)
    return run
