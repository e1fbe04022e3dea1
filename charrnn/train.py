"""The training loop: batch, forward, backward, clip, step, log, evaluate, checkpoint.

`train()` owns a run directory (see README: Files a run writes): it resumes from its
`latest.npz`, holds a lock on it while running, and on SIGINT/SIGTERM finishes the current
step, saves, and raises `SignalError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from charrnn import checkpoint
from charrnn.checkpoint import BEST, LATEST, Checkpoint, CheckpointError
from charrnn.config import Config, build_config
from charrnn.corpus import load_ids
from charrnn.data import Batcher, Source, split_train_val
from charrnn.errors import CharRNNError, NonFiniteError, SignalError, UsageError
from charrnn.evaluate import evaluate
from charrnn.model import CharRNN, ModelShape, init_params
from charrnn.optim import Optimizer, clip_by_global_norm, learning_rate
from charrnn.progress import Progress
from charrnn.runlock import RunLock
from charrnn.vocab import Vocab, describe_chars


@dataclass
class TrainState:
    """Everything that resume needs besides the corpus: the checkpoint's contents, live."""

    config: Config
    vocab: Vocab
    model: CharRNN
    optimizer: Optimizer
    rng: np.random.Generator  # dropout masks
    step: int = 0
    cursor: int = 0  # next chunk of the epoch
    carry: np.ndarray | None = None  # (L, S, B, H) state at the cursor
    best_val_loss: float | None = None
    evals_since_best: int = 0
    val_fingerprint: str | None = None  # which validation text best_val_loss was measured on
    lr_horizon: int | None = None  # the step where a cosine schedule ends, when --time fixed it

    def to_checkpoint(self) -> Checkpoint:
        meta = {
            "vocab": list(self.vocab.chars),
            "model": vars(self.model.shape),
            "config": self.config.to_dict(),
            "dtype": self.config.train.dtype,
            "step": self.step,
            "cursor": self.cursor,
            "optimizer_t": self.optimizer.t,
            "rng": self.rng.bit_generator.state,
            "best_val_loss": self.best_val_loss,
            "evals_since_best": self.evals_since_best,
            "val_fingerprint": self.val_fingerprint,
            "lr_horizon": self.lr_horizon,
        }
        return Checkpoint(self.model.params, meta, self.optimizer.state, self.carry)


def new_state(config: Config, vocab: Vocab) -> TrainState:
    """A freshly initialised model and optimizer."""
    m = config.model
    shape = ModelShape(len(vocab), m.cell, m.hidden_size, m.num_layers, m.dropout)
    rng = np.random.default_rng(config.train.seed)
    model = CharRNN(shape, init_params(shape, rng, np.dtype(config.train.dtype)))
    return TrainState(config, vocab, model, Optimizer(config.train, model.params), rng)


def _grow(array: np.ndarray, axis: int, extra: np.ndarray) -> np.ndarray:
    return np.concatenate([array, extra.astype(array.dtype)], axis=axis)


def grow_vocab(state: TrainState, vocab: Vocab) -> TrainState:
    """Extend the model to a vocabulary that appends characters to the old one: new input rows
    and output columns are initialised like fresh weights; their optimizer state starts at zero."""
    old_v, new_v = len(state.vocab), len(vocab)
    added = new_v - old_v
    shape = replace(state.model.shape, vocab_size=new_v)
    bound = 1.0 / math.sqrt(shape.hidden_size)
    axes = {"layers.0.W_xh": 0, "W_hy": 1, "b_y": 0}
    params = dict(state.model.params)
    for name, axis in axes.items():
        extra_shape = list(params[name].shape)
        extra_shape[axis] = added
        params[name] = _grow(params[name], axis, state.rng.uniform(-bound, bound, extra_shape))
    model = CharRNN(shape, params)
    optimizer = Optimizer(state.config.train, params)
    for key, array in state.optimizer.state.items():
        name = key.split(".", 1)[1]
        if name in axes:
            pad = list(array.shape)
            pad[axes[name]] = added
            array = _grow(array, axes[name], np.zeros(pad))
        np.copyto(optimizer.state[key], array)
    optimizer.t = state.optimizer.t
    return replace(state, vocab=vocab, model=model, optimizer=optimizer)


def write_new_run(run_dir: Path, config: Config, vocab: Vocab, params: dict[str, np.ndarray]) -> None:
    """A run directory whose `latest.npz` holds these weights at step 0 with a fresh optimizer,
    as if trained that far: `train` continues it, `sample` and `eval` use it. A directory that
    already holds a checkpoint is refused."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharRNNError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None
    with RunLock(run_dir):
        if (run_dir / LATEST).exists() or (run_dir / BEST).exists():
            raise UsageError(f"{run_dir} already holds a checkpoint; choose another directory")
        state = new_state(config, vocab)
        for name, array in params.items():
            np.copyto(state.model.params[name], array)
        checkpoint.save(run_dir / LATEST, state.to_checkpoint())
        _write_config(run_dir / "config.yaml", config)


def state_from_checkpoint(ckpt: Checkpoint, config: Config) -> TrainState:
    """The live state of a saved run, continued under `config` (same model, maybe new train keys)."""
    if vars(config.model) != vars(ckpt.config.model):
        raise UsageError(
            f"the run's model is {ckpt.config.model} but the config asks for {config.model}; "
            "use --fresh or another --run-dir to train a different model"
        )
    if config.train.optimizer != ckpt.config.train.optimizer or config.train.dtype != ckpt.config.train.dtype:
        raise UsageError("train.optimizer and train.dtype cannot change on resume; use --fresh")
    model = ckpt.model()
    optimizer = Optimizer(config.train, model.params)
    if ckpt.optim_state:
        optimizer.load_state(ckpt.optim_state, ckpt.meta["optimizer_t"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt.meta["rng"]
    meta = ckpt.meta
    return TrainState(
        config,
        ckpt.vocab,
        model,
        optimizer,
        rng,
        meta["step"],
        meta["cursor"],
        ckpt.carry,
        meta.get("best_val_loss"),
        meta.get("evals_since_best", 0),
        meta.get("val_fingerprint"),
        meta.get("lr_horizon"),
    )


def load_run(run_dir: Path, log: Callable[[str], None]) -> Checkpoint | None:
    """The run's latest checkpoint; if that is unreadable, its best (with a warning); else None."""
    latest, best = run_dir / LATEST, run_dir / BEST
    if latest.exists():
        try:
            return checkpoint.load(latest)
        except CheckpointError as err:
            if not best.exists():
                raise
            log(f"warning: {err}; resuming from {best} instead")
    if best.exists():
        return checkpoint.load(best)
    return None


class SignalStop:
    """While active, SIGINT/SIGTERM only set `signum`; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> SignalStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


LEFTOVER_PATTERNS = (f".{LATEST}.*.tmp", f".{BEST}.*.tmp", ".config.yaml.*.tmp", ".corpus-*.tmp")


def remove_leftovers(run_dir: Path) -> int:
    """Delete the temporary files that a killed `train` left in its run directory; returns how many.

    Only `train` writes these names there (checkpoint.atomic_write of its checkpoints, config and
    corpus cache), and only while it holds the run's lock, which the caller now holds: so every
    such file belongs to a process that is gone.
    """
    removed = 0
    for pattern in LEFTOVER_PATTERNS:
        for path in run_dir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def _open_metrics(path: Path) -> TextIO:
    """metrics.jsonl for appending; a line cut short by a killed run is ended first, so that the
    next event starts a line of its own."""
    cut_short = False
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            cut_short = f.read(1) != b"\n"
    metrics = open(path, "a", encoding="utf-8")  # noqa: SIM115 (the caller closes it)
    if cut_short:
        metrics.write("\n")
    return metrics


def _write_config(path: Path, config: Config) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
    checkpoint.atomic_write(path, lambda f: f.write(text))


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    chars_per_sec: float
    elapsed: float
    run_dir: Path


def train(
    sources: Sequence[Source],
    run_dir: Path,
    config_layers: Sequence[dict[str, Any]] = (),
    steps: int | None = None,
    time_limit: float | None = None,
    fresh: bool = False,
    progress_bar: bool | None = None,
) -> TrainResult:
    """Train (or resume training) a model in `run_dir` on the concatenated sources.

    Runs `steps` steps, or until `train.max_steps` in total, or until `time_limit` seconds,
    whichever comes first, then evaluates and saves.
    """
    build_config(list(config_layers))  # a usage error must not leave an empty run directory behind
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharRNNError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None
    with RunLock(run_dir):
        progress = Progress(0, 0, bar=False)
        removed = remove_leftovers(run_dir)
        if removed:
            progress.log(f"removed {removed} temporary file(s) left by an interrupted run")
        ckpt = None if fresh else load_run(run_dir, progress.log)
        if ckpt is None:
            config = build_config(list(config_layers))
            ids, vocab = load_ids(sources, None, run_dir)
            state = new_state(config, vocab)
        else:
            config = build_config([ckpt.meta["config"], *config_layers])
            state = state_from_checkpoint(ckpt, config)
            ids, vocab = load_ids(sources, state.vocab, run_dir)
            if len(vocab) > len(state.vocab):
                added = vocab.chars[len(state.vocab) :]
                progress.log(f"vocabulary grew by {len(added)}: {describe_chars(added)}")
                state = grow_vocab(state, vocab)
        _write_config(run_dir / "config.yaml", config)
        return _Session(state, ids, run_dir, steps, time_limit, progress_bar).run()


class _Session:
    """One invocation of the training loop over a live `TrainState`, split by job: `step` (batch,
    forward, backward, clip, update), `evaluate_and_save` (validation, best/latest checkpoints),
    `log` (metrics.jsonl and the progress display); `run` puts them in order."""

    def __init__(
        self,
        state: TrainState,
        ids: np.ndarray,
        run_dir: Path,
        steps: int | None,
        time_limit: float | None,
        progress_bar: bool | None,
    ) -> None:
        self.state, self.run_dir, self.time_limit = state, run_dir, time_limit
        tc = self.tc = state.config.train
        train_ids, val_ids = split_train_val(ids, tc.val_fraction)
        self.val_ids = val_ids[: tc.eval_chars] if tc.eval_chars else val_ids
        self.batcher = Batcher(train_ids, tc.batch_size, tc.seq_len)
        if (
            state.cursor >= self.batcher.chunks_per_epoch
            or state.carry is None
            or state.carry.shape[2] != tc.batch_size
        ):
            state.cursor, state.carry = 0, None
        self.first_step = state.step
        self.target = state.step + steps if steps is not None else tc.max_steps
        self.progress = Progress(state.step, max(self.target, state.step), bar=progress_bar)
        fingerprint = f"{len(self.val_ids)}:{zlib.crc32(np.ascontiguousarray(self.val_ids)):08x}"
        if fingerprint != state.val_fingerprint:
            if state.best_val_loss is not None:
                self.progress.log("the validation text changed: best.npz will be replaced at the next evaluation")
            state.val_fingerprint, state.best_val_loss, state.evals_since_best = fingerprint, None, 0
        shape = state.model.shape
        self.progress.log(
            f"{shape.cell} {shape.num_layers}x{shape.hidden_size}, vocab {len(state.vocab)}, "
            f"{len(train_ids):,} train / {len(self.val_ids):,} val chars, step {state.step} -> {self.target}, "
            f"run {run_dir}"
        )
        # With --time alone, how many steps the budget allows is measured once the run is under
        # way (see `_measure_budget`); a cosine schedule then ends there, and the bar counts to it.
        self.measure_budget = time_limit is not None and steps is None
        self.started = time.perf_counter()
        self.window_start, self.window_losses = self.started, []
        self.last_loss: float | None = None
        self.val_loss: float | None = None
        self.evaluated_at = -1

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def speed(self) -> float:
        """Characters per second since the last logged event."""
        chars = len(self.window_losses) * self.tc.batch_size * self.tc.seq_len
        return chars / max(time.perf_counter() - self.window_start, 1e-9)

    def eta(self) -> float:
        done = max(self.state.step - self.first_step, 1)
        left = (self.target - self.state.step) * self.elapsed() / done
        return left if self.time_limit is None else min(left, max(self.time_limit - self.elapsed(), 0.0))

    def step(self) -> None:
        """One step of truncated BPTT on the next chunk, the hidden state carried from the last."""
        state, model, tc = self.state, self.state.model, self.tc
        if state.cursor == 0 or state.carry is None:
            state.carry = model.initial_state(tc.batch_size)
        x, y = self.batcher.chunk(state.cursor)
        loss, carry = model.loss(x, y, state.carry, state.rng if model.shape.dropout > 0 else None)
        if not math.isfinite(loss):
            raise NonFiniteError(f"loss is not finite ({loss}) at step {state.step}")
        grads = model.backward()
        clip_by_global_norm(grads, tc.grad_clip)
        state.optimizer.step(model.params, grads, learning_rate(tc, state.step, state.lr_horizon))
        state.carry = carry
        state.step += 1
        state.cursor = (state.cursor + 1) % self.batcher.chunks_per_epoch
        self.window_losses.append(loss)
        self.last_loss = loss
        self.progress.update(state.step, loss, self.speed())

    def evaluate_and_save(self) -> None:
        """Validation loss, then latest.npz, and best.npz when it improved (or without validation)."""
        state, tc = self.state, self.tc
        self.val_loss = None
        if len(self.val_ids) >= 2:
            self.val_loss = evaluate(state.model, self.val_ids, streams=tc.batch_size, seq_len=tc.seq_len).loss
            if not math.isfinite(self.val_loss):
                raise NonFiniteError(f"validation loss is not finite ({self.val_loss}) at step {state.step}")
        val_loss = self.val_loss
        improved = val_loss is not None and (state.best_val_loss is None or val_loss < state.best_val_loss)
        if improved:
            state.best_val_loss, state.evals_since_best = val_loss, 0
        elif val_loss is not None:
            state.evals_since_best += 1
        ckpt = state.to_checkpoint()
        checkpoint.save(self.run_dir / LATEST, ckpt)
        if improved or val_loss is None:
            checkpoint.save(self.run_dir / BEST, ckpt)
        self.evaluated_at = state.step

    def log(self, metrics: TextIO, evaluate: bool) -> None:
        """A metrics event for the steps since the last one (with an evaluation if asked)."""
        step = self.state.step
        event = {
            "step": step,
            "train_loss": float(np.mean(self.window_losses)),
            "chars_per_sec": self.speed(),
            "lr": learning_rate(self.tc, step, self.state.lr_horizon),
            "elapsed": self.elapsed(),
        }
        if evaluate:
            self.evaluate_and_save()
            event["val_loss"] = self.val_loss
            self.progress.evaluated(step, event["train_loss"], self.val_loss, event["chars_per_sec"], self.eta())
        _record(metrics, event)
        self.window_start, self.window_losses = time.perf_counter(), []

    def run(self) -> TrainResult:
        state, tc, run_dir = self.state, self.tc, self.run_dir
        metrics = _open_metrics(run_dir / "metrics.jsonl")
        try:
            # Overflow is not an error here: the loss, gradients and val loss are checked for finiteness.
            with SignalStop() as stop, np.errstate(over="ignore", invalid="ignore"):
                while state.step < self.target:
                    if self.time_limit is not None and self.elapsed() >= self.time_limit:
                        break
                    self.step()
                    if state.step % tc.log_every == 0 or state.step % tc.eval_every == 0:
                        self.log(metrics, evaluate=state.step % tc.eval_every == 0)
                        if tc.patience and state.evals_since_best >= tc.patience:
                            self.progress.log(f"no improvement in {tc.patience} evaluations; stopping early")
                            break
                    if self.measure_budget:
                        self._measure_budget()
                    if stop.signum is not None:
                        break
                if self.evaluated_at != state.step:
                    self.evaluate_and_save()
                    _record(
                        metrics,
                        {
                            "step": state.step,
                            "train_loss": self.last_loss,
                            "val_loss": self.val_loss,
                            "elapsed": self.elapsed(),
                            "chars_per_sec": self.speed(),
                        },
                    )
                if stop.signum is not None:
                    name = signal.Signals(stop.signum).name
                    raise SignalError(f"stopped by {name} at step {state.step}; saved {run_dir / LATEST}", stop.signum)
        except NonFiniteError as err:
            kept = f"the last good checkpoint is {run_dir / LATEST}" if (run_dir / LATEST).exists() else "nothing saved"
            raise NonFiniteError(f"{err}; stopping ({kept}). Try a lower train.lr") from None
        finally:
            metrics.close()
            self.progress.close()
        return self._done()

    def _measure_budget(self) -> None:
        """Once a tenth of the time budget has passed (and at least 5 steps), estimate from the
        speed so far (evaluations in it included) the step the run will stop at. A cosine schedule
        without a saved horizon ends there (saved with the checkpoint, so a resumed run keeps the
        same schedule), and the progress bar counts to it."""
        state, tc = self.state, self.tc
        done, spent = state.step - self.first_step, self.elapsed()
        assert self.time_limit is not None
        if done < 5 or spent < 0.1 * self.time_limit:
            return
        self.measure_budget = False
        # A run that reaches max_steps before the deadline stops there, and so does the schedule.
        end = min(state.step + int(done / spent * max(self.time_limit - spent, 0.0)), self.target)
        if tc.lr_schedule == "cosine" and state.lr_horizon is None:
            state.lr_horizon = end
            self.progress.log(f"cosine schedule: lr reaches {tc.min_lr:g} at step {end:,} (the end of --time)")
        self.progress.set_total(end)

    def _done(self) -> TrainResult:
        state, elapsed = self.state, self.elapsed()
        result = TrainResult(
            state.step, self.last_loss, self.val_loss, state.best_val_loss, self.speed(), elapsed, self.run_dir
        )
        val = None if self.val_loss is None else round(self.val_loss, 4)
        best = None if state.best_val_loss is None else round(state.best_val_loss, 4)
        self.progress.log(f"done: step {state.step}, val loss {val}, best {best}, {elapsed:.1f}s")
        return result


def _record(metrics: TextIO, event: dict[str, Any]) -> None:
    metrics.write(json.dumps(event) + "\n")
    metrics.flush()
