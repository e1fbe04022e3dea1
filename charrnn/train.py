"""The training loop: batch, forward, backward, clip, step, log, evaluate, checkpoint.

`train()` owns a run directory (see `charrnn.rundir`): it holds its lock while running, resumes
its training state, and on SIGINT/SIGTERM finishes the current step, saves, and raises
`SignalError`. The loop itself is `_loop`, one screen; what it calls around each step (the
step, the evaluation and checkpoint, the metrics event, the clock of a time budget) are the
named helpers below it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.checkpoint import Checkpoint, training_meta
from charrnn.config import Config, build_config
from charrnn.corpus import load_ids
from charrnn.data import Batcher, Source, split_train_val
from charrnn.errors import InvalidUsageError, NonFiniteError, SignalError
from charrnn.evaluate import evaluate
from charrnn.metrics import Event, MetricsLog
from charrnn.model import CharRNN, init_params
from charrnn.optim import Optimizer, clip_by_global_norm, learning_rate
from charrnn.progress import Progress
from charrnn.rundir import RunDir
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

    def lr(self) -> float:
        """The learning rate of the next update."""
        return learning_rate(self.config.train.schedule(), self.step, self.lr_horizon)

    def to_checkpoint(self) -> Checkpoint:
        meta = training_meta(
            self.config,
            self.vocab,
            self.rng.bit_generator.state,
            self.step,
            self.cursor,
            self.optimizer.t,
            self.best_val_loss,
            self.evals_since_best,
            self.val_fingerprint,
            self.lr_horizon,
        )
        return Checkpoint(self.model.params, meta, self.optimizer.state, self.carry)


def new_state(config: Config, vocab: Vocab) -> TrainState:
    """A freshly initialised model and optimizer."""
    shape = config.model.shape(len(vocab))
    rng = np.random.default_rng(config.train.seed)
    model = CharRNN(shape, init_params(shape, rng, np.dtype(config.train.dtype)))
    return TrainState(config, vocab, model, Optimizer(config.train.optimizer_settings(), model.params), rng)


def state_from_checkpoint(ckpt: Checkpoint, config: Config) -> TrainState:
    """The live state of a saved run, continued under `config` (same model, maybe new train keys)."""
    if vars(config.model) != vars(ckpt.config.model):
        raise InvalidUsageError(
            f"the run's model is {ckpt.config.model} but the config asks for {config.model}; "
            "use --fresh or another --run-dir to train a different model"
        )
    if config.train.optimizer != ckpt.config.train.optimizer or config.train.dtype != ckpt.config.train.dtype:
        raise InvalidUsageError("train.optimizer and train.dtype cannot change on resume; use --fresh")
    model = ckpt.model()
    optimizer = Optimizer(config.train.optimizer_settings(), model.params)
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
    optimizer = Optimizer(state.optimizer.settings, params)
    for key, array in state.optimizer.state.items():
        name = key.split(".", 1)[1]
        if name in axes:
            pad = list(array.shape)
            pad[axes[name]] = added
            array = _grow(array, axes[name], np.zeros(pad))
        np.copyto(optimizer.state[key], array)
    optimizer.t = state.optimizer.t
    return replace(state, vocab=vocab, model=model, optimizer=optimizer)


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
    run = RunDir(run_dir).create()
    with run.lock():
        log = Progress(0, 0, bar=False).log
        removed = run.remove_leftovers()
        if removed:
            log(f"removed {removed} temporary file(s) left by an interrupted run")
        state, ids = _start(run, sources, config_layers, fresh, log)
        run.write_config(state.config)
        return _loop(state, ids, run, steps, time_limit, progress_bar)


def _start(
    run: RunDir, sources: Sequence[Source], layers: Sequence[dict[str, Any]], fresh: bool, log: Callable[[str], None]
) -> tuple[TrainState, np.ndarray]:
    """The state to train from (the run's training state, or a new one) and the corpus as ids."""
    ckpt = None if fresh else run.load_training_state(log)
    if ckpt is None:
        config = build_config(list(layers))
        ids, vocab = load_ids(sources, None, run.path)
        return new_state(config, vocab), ids
    state = state_from_checkpoint(ckpt, build_config([ckpt.meta["config"], *layers]))
    ids, vocab = load_ids(sources, state.vocab, run.path)
    if len(vocab) > len(state.vocab):
        log(f"vocabulary grew by {len(vocab) - len(state.vocab)}: {describe_chars(vocab.chars[len(state.vocab) :])}")
        state = grow_vocab(state, vocab)
    return state, ids


def _loop(
    state: TrainState, ids: np.ndarray, run: RunDir, steps: int | None, time_limit: float | None, bar: bool | None
) -> TrainResult:
    tc = state.config.train
    train_ids, val_ids = split_train_val(ids, tc.val_fraction)
    val_ids = val_ids[: tc.eval_chars] if tc.eval_chars else val_ids
    batcher = Batcher(train_ids, tc.batch_size, tc.seq_len)
    target = state.step + steps if steps is not None else tc.max_steps
    clock = Clock(time_limit, state.step, fixes_horizon=time_limit is not None and steps is None)
    window = Window(tc.batch_size * tc.seq_len)
    val_loss, saved_at = None, -1
    with Progress(state.step, max(target, state.step), bar=bar) as progress, MetricsLog(run.metrics) as metrics:
        _align(state, batcher, val_ids, progress.log)
        progress.log(_describe(state, len(train_ids), len(val_ids), target, run))
        with SignalStop() as stop, _nan_guard(run), np.errstate(over="ignore", invalid="ignore"):
            while state.step < target and not clock.expired():
                window.add(train_step(state, batcher))
                progress.update(state.step, window.last, window.speed())
                if state.step % tc.log_every == 0 or state.step % tc.eval_every == 0:
                    event = _event(state, window, clock)  # the steps' speed, without the evaluation
                    if state.step % tc.eval_every == 0:
                        val_loss, saved_at = evaluate_and_save(state, run, val_ids), state.step
                        event = event.with_val_loss(val_loss)
                        progress.evaluated(event, clock.eta(state.step, target))
                    metrics.write(event)
                    window.reset()
                    if tc.patience and state.evals_since_best >= tc.patience:
                        progress.log(f"no improvement in {tc.patience} evaluations; stopping early")
                        break
                _fix_horizon(state, clock.steps_by_deadline(state.step), target, progress)
                if stop.signum is not None:
                    break
            if saved_at != state.step:
                val_loss = evaluate_and_save(state, run, val_ids)
                metrics.write(_event(state, window, clock).with_val_loss(val_loss))
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            raise SignalError(f"stopped by {name} at step {state.step}; saved {run.latest}", stop.signum)
        result = TrainResult(
            state.step, window.last, val_loss, state.best_val_loss, window.speed(), clock.elapsed(), run.path
        )
        progress.log(
            f"done: step {state.step}, val loss {_round(val_loss)}, best {_round(state.best_val_loss)}, "
            f"{result.elapsed:.1f}s"
        )
    return result


def train_step(state: TrainState, batcher: Batcher) -> float:
    """One step of truncated BPTT on the next chunk, the hidden state carried from the last:
    forward, backward, clip, update. Returns the chunk's loss (nats per character)."""
    model, tc = state.model, state.config.train
    if state.cursor == 0 or state.carry is None:
        state.carry = model.initial_state(tc.batch_size)
    x, y = batcher.chunk(state.cursor)
    loss, carry = model.loss(x, y, state.carry, state.rng if model.shape.dropout > 0 else None)
    if not math.isfinite(loss):
        raise NonFiniteError(f"loss is not finite ({loss}) at step {state.step}")
    grads = model.backward()
    clip_by_global_norm(grads, tc.grad_clip)
    state.optimizer.step(model.params, grads, state.lr())
    state.carry = carry
    state.step += 1
    state.cursor = (state.cursor + 1) % batcher.chunks_per_epoch
    return loss


def evaluate_and_save(state: TrainState, run: RunDir, val_ids: np.ndarray) -> float | None:
    """The validation loss (None without validation text); then latest.npz, and best.npz when
    the loss improved (or without validation)."""
    tc = state.config.train
    val_loss = None
    if len(val_ids) >= 2:
        val_loss = evaluate(state.model, val_ids, streams=tc.batch_size, seq_len=tc.seq_len).loss
        if not math.isfinite(val_loss):
            raise NonFiniteError(f"validation loss is not finite ({val_loss}) at step {state.step}")
    improved = val_loss is not None and (state.best_val_loss is None or val_loss < state.best_val_loss)
    if improved:
        state.best_val_loss, state.evals_since_best = val_loss, 0
    elif val_loss is not None:
        state.evals_since_best += 1
    run.save(state.to_checkpoint(), best=improved or val_loss is None)
    return val_loss


def _event(state: TrainState, window: Window, clock: Clock) -> Event:
    """The metrics event for the steps since the last one; an evaluation adds its loss
    (`Event.with_val_loss`)."""
    return Event(state.step, window.mean(), state.lr(), window.speed(), clock.elapsed())


class Window:
    """The training losses and the wall time since the last metrics event."""

    def __init__(self, chars_per_step: int) -> None:
        self.chars_per_step = chars_per_step
        self.last: float | None = None
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.started = time.perf_counter()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.last = loss

    def mean(self) -> float | None:
        """The mean loss of the window's steps (the last step's loss when it has none)."""
        return float(np.mean(self.losses)) if self.losses else self.last

    def speed(self) -> float:
        """Characters trained per second in the window."""
        return len(self.losses) * self.chars_per_step / max(time.perf_counter() - self.started, 1e-9)


class Clock:
    """Wall time since the start of this invocation, against an optional `--time` budget."""

    def __init__(self, limit: float | None, first_step: int, fixes_horizon: bool) -> None:
        self.limit, self.first_step = limit, first_step
        self.fixes_horizon = fixes_horizon
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def expired(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit

    def eta(self, step: int, target: int) -> float:
        """Seconds left: to `target` at the speed so far, or to the deadline if sooner."""
        left = (target - step) * self.elapsed() / max(step - self.first_step, 1)
        return left if self.limit is None else min(left, max(self.limit - self.elapsed(), 0.0))

    def steps_by_deadline(self, step: int) -> int | None:
        """With `fixes_horizon`, once: when a tenth of the budget has passed (and at least 5
        steps), the step the run will reach at the deadline, from the speed so far (evaluations
        included). None before and after that moment."""
        done, spent = step - self.first_step, self.elapsed()
        if not self.fixes_horizon or self.limit is None or done < 5 or spent < 0.1 * self.limit:
            return None
        self.fixes_horizon = False
        return step + int(done / spent * max(self.limit - spent, 0.0))


def _fix_horizon(state: TrainState, end: int | None, target: int, progress: Progress) -> None:
    """A time budget's end is known: a cosine schedule without a saved horizon ends there (saved
    with the checkpoint, so a resumed run keeps the same schedule), and the bar counts to it. A
    run that reaches its target step before the deadline stops there, and so does the schedule."""
    if end is None:
        return
    end = min(end, target)
    tc = state.config.train
    if tc.lr_schedule == "cosine" and state.lr_horizon is None:
        state.lr_horizon = end
        progress.log(f"cosine schedule: lr reaches {tc.min_lr:g} at step {end:,} (the end of --time)")
    progress.set_total(end)


def _align(state: TrainState, batcher: Batcher, val_ids: np.ndarray, log: Callable[[str], None]) -> None:
    """Fit a resumed state to this invocation's data: a new epoch when the cursor or the carried
    state no longer fit the batches; a new best when the validation text changed."""
    B = state.config.train.batch_size
    if state.cursor >= batcher.chunks_per_epoch or state.carry is None or state.carry.shape[2] != B:
        state.cursor, state.carry = 0, None
    fingerprint = f"{len(val_ids)}:{zlib.crc32(np.ascontiguousarray(val_ids)):08x}"
    if fingerprint != state.val_fingerprint:
        if state.best_val_loss is not None:
            log("the validation text changed: best.npz will be replaced at the next evaluation")
        state.val_fingerprint, state.best_val_loss, state.evals_since_best = fingerprint, None, 0


def _describe(state: TrainState, n_train: int, n_val: int, target: int, run: RunDir) -> str:
    s = state.model.shape
    return (
        f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {len(state.vocab)}, {n_train:,} train / {n_val:,} val "
        f"chars, step {state.step} -> {target}, run {run.path}"
    )


def _round(loss: float | None) -> float | None:
    return None if loss is None else round(loss, 4)


@contextlib.contextmanager
def _nan_guard(run: RunDir) -> Iterator[None]:
    """A NaN or inf stops training with what was kept and what to try."""
    try:
        yield
    except NonFiniteError as err:
        kept = f"the last good checkpoint is {run.latest}" if run.latest.exists() else "nothing saved"
        raise NonFiniteError(f"{err}; stopping ({kept}). Try a lower train.lr") from None


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
