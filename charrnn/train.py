"""The training loop: batch, forward, backward, clip, step, log, evaluate, checkpoint.

`train()` owns a run directory (see `charrnn.rundir`): it holds its lock while running, resumes
its training state, and on SIGINT/SIGTERM finishes the current step, saves, and raises
`SignalError`. The loop itself is `_loop`, one screen; what it calls around each step (the
step, the evaluation and checkpoint, the metrics event, the clock of a time budget, the
processes' agreement under torchrun) are the named helpers below it. The arithmetic of a step
is the engine's (`charrnn.engine`: numpy, or torch on a CPU or GPU).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from charrnn import checkpoint
from charrnn.checkpoint import Checkpoint, RunProgress
from charrnn.config import RATES, Config, ModelConfig, build_config
from charrnn.corpus import load_ids
from charrnn.data import Batcher, Source, split_train_val
from charrnn.distributed import World
from charrnn.engine import Engine, EngineState, StepSettings, make_engine
from charrnn.errors import InvalidUsageError, NonFiniteError, SignalError
from charrnn.flops import peak_flops, train_flops_per_char
from charrnn.metrics import Event, MetricsLog
from charrnn.model import ModelShape, init_params
from charrnn.optim import learning_rate
from charrnn.progress import Progress
from charrnn.rundir import RunDir, find_model
from charrnn.tracking import TensorBoardLog, WandbLog
from charrnn.vocab import Vocab, describe_chars


@dataclass
class TrainState:
    """A run as it trains: its config and vocabulary, how far it has come (`progress`, what a
    checkpoint saves by field name), and the engine, which holds the weights, optimizer
    moments, carried state and random generators."""

    config: Config
    vocab: Vocab
    engine: Engine
    progress: RunProgress = field(default_factory=RunProgress)

    def lr(self) -> float:
        """The learning rate of the next update."""
        return learning_rate(self.config.train.schedule(), self.progress.step, self.progress.lr_horizon)

    def model(self) -> ModelConfig:
        """The model as it trains: the config's, with the regularisers of its planned passes."""
        return self.config.model.for_passes(self.progress.planned_passes)

    def to_checkpoint(self) -> Checkpoint:
        return Checkpoint.of(self.config, self.vocab, self.progress, self.engine.state())


def _engine(config: Config, vocab: Vocab, state: EngineState, passes: float | None = None) -> Engine:
    """The engine that `train.engine` names, holding `state`, regularised for `passes`."""
    tc, model = config.train, config.model.for_passes(passes)
    settings = StepSettings(model.shape(len(vocab)), model.regularisers(), tc.optimizer_settings(), tc.grad_clip)
    return make_engine(tc.engine, settings, state, tc.device)


def new_state(config: Config, vocab: Vocab) -> TrainState:
    """A freshly initialised model and optimizer."""
    rng = np.random.default_rng(config.train.seed)
    params = init_params(config.model.shape(len(vocab)), rng, np.dtype(config.train.dtype))
    return TrainState(config, vocab, _engine(config, vocab, EngineState(params, {}, 0, None, rng.bit_generator.state)))


def init_state(base: Checkpoint, config: Config, vocab: Vocab) -> TrainState:
    """Fine-tuning: a new run whose first weights are `base`'s, over `vocab` (base's own, or it
    with new characters appended, their rows initialised as in `grow_vocab`); the optimizer,
    data cursor, schedule and generators start fresh from `config`, whose model must have
    base's cell and size (its regularisers may differ)."""
    if config.model.shape(len(base.vocab)) != base.shape:
        s = base.shape
        raise InvalidUsageError(
            f"--init-from: its model is {s.cell} {s.num_layers}x{s.hidden_size} but the config asks for "
            f"{config.model.cell} {config.model.num_layers}x{config.model.hidden_size}"
        )
    rng = np.random.default_rng(config.train.seed)
    dtype = np.dtype(config.train.dtype)
    params = {name: array.astype(dtype) for name, array in base.params.items()}
    state = EngineState(params, {}, 0, None, rng.bit_generator.state)
    if len(vocab) > len(base.vocab):
        state = grow_vocab(state, base.shape, len(vocab))
    return TrainState(config, vocab, _engine(config, vocab, state))


def check_resumable(ckpt: Checkpoint, config: Config) -> None:
    """A saved run continues under `config` only with the same model, optimizer and dtype."""
    if vars(config.model) != vars(ckpt.config.model):
        raise InvalidUsageError(
            f"the run's model is {ckpt.config.model} but the config asks for {config.model}; "
            "use --fresh or another --run-dir to train a different model"
        )
    if config.train.optimizer != ckpt.config.train.optimizer or config.train.dtype != ckpt.config.train.dtype:
        raise InvalidUsageError("train.optimizer and train.dtype cannot change on resume; use --fresh")


def resume_state(ckpt: Checkpoint, config: Config, vocab: Vocab) -> TrainState:
    """The live state of a saved run, continued under `config` (checked by `check_resumable`)
    over `vocab`: the run's own, or that vocabulary with new characters appended."""
    state, progress = ckpt.engine_state(), ckpt.progress
    if len(vocab) > len(ckpt.vocab):
        state = grow_vocab(state, ckpt.shape, len(vocab))
    return TrainState(config, vocab, _engine(config, vocab, state, progress.planned_passes), progress)


def _grow(array: np.ndarray, axis: int, extra: np.ndarray) -> np.ndarray:
    return np.concatenate([array, extra.astype(array.dtype)], axis=axis)


def grow_vocab(state: EngineState, shape: ModelShape, vocab_size: int) -> EngineState:
    """Extend a model of `shape` to a vocabulary that appends characters to its own: new input
    rows and output columns are initialised like fresh weights (from the state's generator);
    their optimizer state starts at zero."""
    added = vocab_size - shape.vocab_size
    bound = 1.0 / math.sqrt(shape.hidden_size)
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng
    axes = {"layers.0.W_xh": 0, "W_hy": 1, "b_y": 0}
    params = dict(state.params)
    for name, axis in axes.items():
        extra_shape = list(params[name].shape)
        extra_shape[axis] = added
        params[name] = _grow(params[name], axis, rng.uniform(-bound, bound, extra_shape))
    optim_state = dict(state.optim_state)
    for key, array in optim_state.items():
        name = key.split(".", 1)[1]
        if name in axes:
            pad = list(array.shape)
            pad[axes[name]] = added
            optim_state[key] = _grow(array, axes[name], np.zeros(pad))
    return replace(state, params=params, optim_state=optim_state, rng=rng.bit_generator.state)


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
    init_from: Path | None = None,
    sinks: Sequence[Any] = (),
) -> TrainResult:
    """Train (or resume training) a model in `run_dir` on the concatenated sources.

    Runs `steps` steps, or until `train.max_steps` in total, or until `time_limit` seconds,
    whichever comes first, then evaluates and saves. `init_from` (a run directory or a
    checkpoint) gives a new run its first weights: fine-tuning (see `init_state`). Each of
    `sinks` (an object with `write(event)` and `close()`) gets every metrics event as it is
    written, on the process that writes the run; an exception it raises stops training there,
    after the event's checkpoint (a sweep's pruner does so).
    """
    asked = build_config(list(config_layers))  # a usage error must not leave an empty run directory behind
    world = _join(asked)
    run = RunDir(run_dir)
    try:
        if not world.is_main:  # torchrun's other ranks: read what rank 0 has prepared, write nothing
            world.barrier()
            state, ids = _start(run, sources, config_layers, fresh, lambda message: None, init_from)
            return _loop(state, ids, run, steps, time_limit, progress_bar, world, ())
        with run.create().lock():
            log = Progress(0, 0, bar=False).log
            removed = run.remove_leftovers()
            if removed:
                log(f"removed {removed} temporary file(s) left by an interrupted run")
            state, ids = _start(run, sources, config_layers, fresh, log, init_from)
            run.write_config(state.config)
            world.barrier()
            return _loop(state, ids, run, steps, time_limit, progress_bar, world, sinks)
    finally:
        world.leave()


def _join(config: Config) -> World:
    """This process's world: torchrun's process group when torchrun started it, else one process."""
    if not World.launched():
        return World.current()
    if config.train.engine != "torch":
        raise InvalidUsageError("training under torchrun needs the torch engine: -s train.engine=torch")
    return World.join(config.train.device)


def _start(
    run: RunDir,
    sources: Sequence[Source],
    layers: Sequence[dict[str, Any]],
    fresh: bool,
    log: Callable[[str], None],
    init_from: Path | None = None,
) -> tuple[TrainState, np.ndarray]:
    """The state to train from (the run's training state, or a new one, from `init_from`'s
    weights when given) and the corpus as ids."""
    ckpt = None if fresh else run.load_training_state(log)
    if ckpt is None and init_from is not None:
        found = find_model(init_from)
        base = checkpoint.load(found)
        ids, vocab = load_ids(sources, base.vocab, run.path)
        state = init_state(base, build_config([{"model": base.meta["config"]["model"]}, *layers]), vocab)
        log(f"initialised from {found} (step {base.progress.step}, vocab {len(base.vocab)})")
        if len(vocab) > len(base.vocab):
            log(f"vocabulary grew by {len(vocab) - len(base.vocab)}: {describe_chars(vocab.chars[len(base.vocab) :])}")
        return state, ids
    if ckpt is None:
        config = build_config(list(layers))
        ids, vocab = load_ids(sources, None, run.path)
        return new_state(config, vocab), ids
    if init_from is not None:
        log(f"{run.path} has a training state: resuming it (--init-from starts new runs; --fresh starts over)")
    config = build_config([ckpt.meta["config"], *layers])
    check_resumable(ckpt, config)
    ids, vocab = load_ids(sources, ckpt.vocab, run.path)
    if len(vocab) > len(ckpt.vocab):
        log(f"vocabulary grew by {len(vocab) - len(ckpt.vocab)}: {describe_chars(vocab.chars[len(ckpt.vocab) :])}")
    return resume_state(ckpt, config, vocab), ids


def _loop(
    state: TrainState,
    ids: np.ndarray,
    run: RunDir,
    steps: int | None,
    time_limit: float | None,
    bar: bool | None,
    world: World,
    sinks: Sequence[Any],
) -> TrainResult:
    tc, so_far = state.config.train, state.progress  # so_far: the one RunProgress, advanced by each step
    world.streams(tc.batch_size)  # a batch that torchrun's processes cannot share fails here
    train_ids, val_ids = split_train_val(ids, tc.val_fraction)
    val_ids = val_ids[: tc.eval_chars] if tc.eval_chars else val_ids
    batcher = Batcher(train_ids, tc.batch_size, tc.seq_len)
    target = so_far.step + steps if steps is not None else tc.max_steps
    utilisation = _utilisation(state, world)  # before the clock: measuring the peak is not training
    clock = Clock(time_limit, so_far.step, fixes_horizon=time_limit is not None and steps is None)
    window = Window(tc.batch_size * tc.seq_len, utilisation)
    val_loss, saved_at = None, -1
    with (
        Progress(so_far.step, max(target, so_far.step), bar=bar, silent=not world.is_main) as progress,
        MetricsLog(run.metrics if world.is_main else None, [*_trackers(state, run, world), *sinks]) as metrics,
    ):
        _align(state, batcher, val_ids, progress.log)
        progress.log(_describe(state, len(train_ids), len(val_ids), target, run, world))
        if not clock.fixes_horizon:  # the end is known now: --steps, or train.max_steps
            _plan_regularisers(state, target, len(train_ids), progress.log)
        with SignalStop() as stop, _nan_guard(run), np.errstate(over="ignore", invalid="ignore"):
            while so_far.step < target:
                halt, end = _verdict(world, clock, stop, so_far.step)
                if end is not None:  # --time has measured the step its deadline allows
                    _fix_horizon(state, min(end, target), progress)
                    _plan_regularisers(state, min(end, target), len(train_ids), progress.log)
                if halt:
                    break
                window.add(train_step(state, batcher))
                progress.update(so_far.step)
                if so_far.step % tc.log_every == 0 or so_far.step % tc.eval_every == 0:
                    event = _event(state, window, clock)  # the steps' speed, without the evaluation
                    if so_far.step % tc.eval_every == 0:
                        started = time.perf_counter()
                        val_loss, saved_at = evaluate_and_save(state, run, val_ids, world), so_far.step
                        event = event.with_val_loss(val_loss, time.perf_counter() - started)
                        progress.evaluated(event, clock.eta(so_far.step, target))
                    progress.show(event)
                    metrics.write(event)
                    window.reset()
                    if tc.patience and so_far.evals_since_best >= tc.patience:
                        progress.log(f"no improvement in {tc.patience} evaluations; stopping early")
                        break
            if saved_at != so_far.step:
                event, started = _event(state, window, clock), time.perf_counter()
                val_loss = evaluate_and_save(state, run, val_ids, world)
                metrics.write(event.with_val_loss(val_loss, time.perf_counter() - started))
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            raise SignalError(f"stopped by {name} at step {so_far.step}; saved {run.latest}", stop.signum)
        result = TrainResult(
            so_far.step, window.last, val_loss, so_far.best_val_loss, window.speed(), clock.elapsed(), run.path
        )
        progress.log(
            f"done: step {so_far.step}, val loss {_round(val_loss)}, best {_round(so_far.best_val_loss)}, "
            f"{result.elapsed:.1f}s"
        )
    return result


def _trackers(state: TrainState, run: RunDir, world: World) -> list[Any]:
    """What `log.*` asks to track, on the process that writes the run (see `charrnn.tracking`)."""
    log, config, step = state.config.log, state.config.to_dict(), state.progress.step
    if not world.is_main:
        return []
    trackers: list[Any] = []
    if log.tensorboard is not False:
        trackers.append(TensorBoardLog(run.tensorboard(log.tensorboard), config, step))
    if log.wandb:
        trackers.append(WandbLog(log.wandb, run.path, config, step))
    return trackers


def train_step(state: TrainState, batcher: Batcher) -> Any:
    """One step of truncated BPTT on the next chunk, the hidden state carried from the last:
    forward, backward, clip, update (by the engine). Returns the chunk's loss (nats per
    character; a float, or an engine's number that `float()` reads)."""
    so_far = state.progress
    if so_far.cursor == 0:
        state.engine.new_epoch()
    x, y = batcher.chunk(so_far.cursor)
    try:
        loss = state.engine.step(x, y, state.lr())
    except NonFiniteError as err:
        raise NonFiniteError(f"{err} at step {so_far.step}") from None
    so_far.step += 1
    so_far.cursor = (so_far.cursor + 1) % batcher.chunks_per_epoch
    return loss


def evaluate_and_save(state: TrainState, run: RunDir, val_ids: np.ndarray, world: World) -> float | None:
    """The validation loss (None without validation text); then latest.npz, and best.npz when
    the loss improved (or without validation). Under torchrun every rank evaluates and gathers
    the state; rank 0 writes."""
    tc, so_far = state.config.train, state.progress
    val_loss = None
    if len(val_ids) >= 2:
        val_loss = state.engine.evaluate(val_ids, tc.batch_size, tc.seq_len)
        if not math.isfinite(val_loss):
            raise NonFiniteError(f"validation loss is not finite ({val_loss}) at step {so_far.step}")
    improved = val_loss is not None and (so_far.best_val_loss is None or val_loss < so_far.best_val_loss)
    if improved:
        so_far.best_val_loss, so_far.evals_since_best = val_loss, 0
    elif val_loss is not None:
        so_far.evals_since_best += 1
    ckpt = state.to_checkpoint()
    if world.is_main:
        run.save(ckpt, best=improved or val_loss is None)
    return val_loss


def _verdict(world: World, clock: Clock, stop: SignalStop, step: int) -> tuple[bool, int | None]:
    """Before each step, the same on every process: whether to stop now (the deadline, a
    signal), and, once, the step a time budget ends at (rank 0's estimate)."""
    end = clock.steps_by_deadline(step) if world.is_main else None
    expired, signalled, agreed = world.agree([clock.expired(), stop.signum is not None, -1 if end is None else end])
    return bool(expired or signalled), None if agreed < 0 else agreed


def _event(state: TrainState, window: Window, clock: Clock) -> Event:
    """The metrics event for the steps since the last one; an evaluation adds its loss
    (`Event.with_val_loss`). An engine that does not check each step's loss (torch's, which
    would wait for the device) has it checked here."""
    loss = window.mean()
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteError(f"loss is not finite ({loss}) by step {state.progress.step}")
    speed = window.speed()
    mfu = None if window.utilisation is None else speed * window.utilisation
    return Event(state.progress.step, loss, state.lr(), speed, clock.elapsed(), mfu=mfu)


def _utilisation(state: TrainState, world: World) -> float | None:
    """MFU per character per second: the model's training FLOPs per character over the peak
    of every process training it (`charrnn.flops`); None where no metrics are written."""
    if not world.is_main:
        return None
    tc = state.config.train
    peak = peak_flops(tc.engine, str(getattr(state.engine, "device", "cpu")), tc.dtype) * world.size
    return train_flops_per_char(state.config.model.shape(len(state.vocab))) / peak


class Window:
    """The training losses and the wall time since the last metrics event. Losses are kept as
    the engine gives them and read (`float`) only here, when an event needs them.
    `utilisation`: the MFU of one character per second (None: not reported)."""

    def __init__(self, chars_per_step: int, utilisation: float | None = None) -> None:
        self.chars_per_step, self.utilisation = chars_per_step, utilisation
        self._last: Any = None
        self.reset()

    def reset(self) -> None:
        self.losses: list[Any] = []
        self.started = time.perf_counter()

    def add(self, loss: Any) -> None:
        self.losses.append(loss)
        self._last = loss

    @property
    def last(self) -> float | None:
        return None if self._last is None else float(self._last)

    def mean(self) -> float | None:
        """The mean loss of the window's steps; None when it has none (a final evaluation at a
        step already logged trains nothing of its own, and a repeated loss would plot as a dip)."""
        return float(np.mean([float(loss) for loss in self.losses])) if self.losses else None

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


def _fix_horizon(state: TrainState, end: int, progress: Progress) -> None:
    """A time budget's end is known (the deadline's step, or the target step if sooner): a cosine
    schedule without a saved horizon ends there (saved with the checkpoint, so a resumed run
    keeps the same schedule), and the bar counts to it."""
    tc = state.config.train
    if tc.lr_schedule == "cosine" and state.progress.lr_horizon is None:
        state.progress.lr_horizon = end
        progress.log(f"cosine schedule: lr reaches {tc.min_lr:g} at step {end:,} (the end of --time)")
    progress.set_total(end)


def _plan_regularisers(state: TrainState, end: int, n_train: int, log: Callable[[str], None]) -> None:
    """The run's end is known: with model.by_passes, its passes over the `n_train` training
    characters decide its regularisers from here on (saved with the checkpoint, so a resumed run
    keeps them). A run that has decided already keeps its decision."""
    if not state.config.model.by_passes or state.progress.planned_passes is not None:
        return
    tc = state.config.train
    passes = state.progress.planned_passes = end * tc.batch_size * tc.seq_len / max(n_train, 1)
    model = state.model()
    state.engine.regularise(model.regularisers())
    rates = ", ".join(f"{key} {getattr(model, key):g}" for key in RATES)
    log(f"regularisers for {passes:.1f} passes over the training text (model.by_passes): {rates}")


def _align(state: TrainState, batcher: Batcher, val_ids: np.ndarray, log: Callable[[str], None]) -> None:
    """Fit a resumed state to this invocation's data: a new epoch when the cursor or the carried
    state no longer fit the batches; a new best when the validation text changed."""
    so_far = state.progress
    if so_far.cursor >= batcher.chunks_per_epoch or state.engine.carried_streams() != state.config.train.batch_size:
        so_far.cursor = 0
        state.engine.new_epoch()
    fingerprint = f"{len(val_ids)}:{zlib.crc32(np.ascontiguousarray(val_ids)):08x}"
    if fingerprint != so_far.val_fingerprint:
        if so_far.best_val_loss is not None:
            log("the validation text changed: best.npz will be replaced at the next evaluation")
        so_far.val_fingerprint, so_far.best_val_loss, so_far.evals_since_best = fingerprint, None, 0


def _describe(state: TrainState, n_train: int, n_val: int, target: int, run: RunDir, world: World) -> str:
    m = state.config.model
    where = f"{state.engine.name} engine" + (f", {world.size} processes" if world.size > 1 else "")
    return (
        f"{m.cell} {m.num_layers}x{m.hidden_size}, vocab {len(state.vocab)}, {n_train:,} train / {n_val:,} val "
        f"chars, step {state.progress.step} -> {target}, {where}, run {run.path}"
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
