"""`charrnn sweep`: a hyper-parameter search on Optuna whose trials are charrnn runs.

Each trial is a real run directory, `SWEEP_DIR/trial-NNNN`, trained by `charrnn.train.train`
for the budget (minutes, steps, or both) with the settings the study's sampler chose from the
search space. The study lives in a storage that any number of processes join:

    SWEEP_DIR/study.journal      the default: Optuna's journal file, for processes on one machine
    postgresql://... (any URL)   Optuna's RDB storage, for processes on many machines; a
                                 process killed mid-trial leaves the trial failed once its
                                 heartbeat is older than twice `heartbeat` seconds

Every evaluation's validation loss is reported to the study as it is written, so the pruner
can stop a trial that cannot win (pruned: its run keeps the checkpoint of that evaluation). With
a time budget the study's step is the percent of the budget spent, and each percent an
evaluation passes over carries the loss known at that time, so trials of different speeds are
compared at equal minutes; with a step budget it is the training step. A trial's value is its
best validation loss; the best trial's whole config is written to SWEEP_DIR/best.yaml, which
`charrnn train -c` takes.

The space maps config keys to a list (a choice), a range `{low, high, log, step}` (ints when
both ends are ints), or a single value (fixed). Optuna is imported only here (the `sweep` extra).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charrnn.atomic import atomic_write
from charrnn.config import build_config, load_yaml, nested
from charrnn.data import Source
from charrnn.errors import CharRNNError, InvalidUsageError, SignalError
from charrnn.extras import require
from charrnn.metrics import Event
from charrnn.runs import aligned
from charrnn.train import train

DEFAULT_SPACE: dict[str, Any] = {
    "model.cell": ["gru", "lstm", "rnn"],
    "model.hidden_size": [128, 256, 512],
    "model.num_layers": [1, 2, 3],
    "model.dropout": {"low": 0.0, "high": 0.4},
    "model.output_dropout": {"low": 0.0, "high": 0.4},
    "model.weight_drop": {"low": 0.0, "high": 0.4},
    "train.lr": {"low": 5.0e-4, "high": 1.0e-2, "log": True},
    "train.weight_decay": [0.0, 0.001, 0.01, 0.1],
    "train.batch_size": [16, 32, 64],
    "train.seq_len": [32, 64, 128],
}
PRUNERS = ("median", "hyperband", "none")
JOURNAL = "study.journal"
BEST = "best.yaml"
UNLIMITED_STEPS = 1_000_000_000  # a time budget alone: the minutes are the limit, not train.max_steps


class TrialFailed(Exception):  # noqa: N818 (Optuna records it as the trial's failure)
    """A trial that could not train (it diverged, say): the study records it failed and goes on."""


@dataclass(frozen=True)
class Budget:
    """What each trial may spend: `seconds` of wall time, `steps` training steps, or both."""

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is None and self.steps is None:
            raise InvalidUsageError("a sweep needs a budget per trial: --budget (10m, 1h) or --steps N")

    def layer(self) -> dict[str, Any]:
        """The config layer that makes a trial's run end with the budget."""
        return {"train": {"max_steps": self.steps if self.steps is not None else UNLIMITED_STEPS}}

    def resource(self, event: Event) -> int:
        """The study's step for an event: percent of the time budget spent, else the step."""
        if self.seconds is None:
            return event.step
        return min(100, int(100 * event.elapsed / self.seconds))

    def resource_total(self) -> int:
        """The study's step at the end of a trial: 100 (percent of the time), else the steps."""
        return 100 if self.seconds is not None or self.steps is None else self.steps

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "steps": self.steps}


def load_space(path: Path | None) -> dict[str, Any]:
    """The search space in a YAML file (`DEFAULT_SPACE` without one)."""
    return dict(DEFAULT_SPACE) if path is None else load_yaml(path)


def check_space(space: dict[str, Any], base: Sequence[dict[str, Any]]) -> None:
    """Refuse a space whose keys or values no trial could train with, before any trial starts."""
    if not space:
        raise InvalidUsageError("the search space is empty")
    for key, rule in space.items():
        where = f"search space key {key}"
        if isinstance(rule, list):
            if not rule or not all(isinstance(v, bool | int | float | str) for v in rule):
                raise InvalidUsageError(f"{where}: a choice is a list of plain values, got {rule!r}")
            values = rule
        elif isinstance(rule, dict):
            _check_range(where, rule)
            values = [rule["low"], rule["high"]]
        else:
            values = [rule]
        for value in values:
            build_config([*base, nested(str(key), value)])  # an unknown key or a bad value says which


def _check_range(where: str, rule: dict[str, Any]) -> None:
    unknown = set(rule) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(rule):
        raise InvalidUsageError(f"{where}: a range is {{low, high, log, step}}, got {rule!r}")
    low, high = rule["low"], rule["high"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:
        raise InvalidUsageError(f"{where}: a range needs numbers low < high, got {low!r} and {high!r}")
    if rule.get("log") and low <= 0:
        raise InvalidUsageError(f"{where}: a log range needs low > 0, got {low!r}")


def starting_point(space: dict[str, Any], layers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The config's own value of each key of the space that the space allows: a study's first
    trial, so that a sweep never ranks below the settings it started from."""
    config = build_config(list(layers)).to_dict()
    values = {}
    for key, rule in space.items():
        section, _, name = str(key).partition(".")
        value = config[section][name]
        ranged = isinstance(rule, dict) and rule["low"] <= value <= rule["high"]
        if ranged or (isinstance(rule, list) and value in rule):
            values[key] = value
    return values


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's value for each key of the space (an Optuna trial's suggestions)."""
    chosen: dict[str, Any] = {}
    for key, rule in space.items():
        if isinstance(rule, list):
            chosen[key] = trial.suggest_categorical(key, rule)
        elif isinstance(rule, dict):
            kind = trial.suggest_int if all(isinstance(rule[e], int) for e in ("low", "high")) else trial.suggest_float
            options = {name: rule[name] for name in ("log", "step") if name in rule}
            chosen[key] = kind(key, rule["low"], rule["high"], **options)
        else:
            chosen[key] = rule
    return chosen


class Reporter:
    """A sink of `train`'s metrics events: each evaluation's loss to the trial, then the
    pruner's verdict (Optuna's TrialPruned stops the training)."""

    def __init__(self, trial: Any, budget: Budget) -> None:
        self._trial, self._budget = trial, budget
        self._last, self._known = -1, math.nan

    def write(self, event: Event) -> None:
        if not event.evaluated or event.val_loss is None:
            return
        resource = self._budget.resource(event)
        if resource <= self._last:
            return
        if self._budget.seconds is not None and self._last >= 0:
            for percent in range(self._last + 1, resource):  # the loss known then: the last evaluation's
                self._trial.report(self._known, percent)
        self._trial.report(event.val_loss, resource)
        self._trial.set_user_attr("step", event.step)
        self._last, self._known = resource, event.val_loss
        if self._trial.should_prune():
            raise require("optuna", "sweep").TrialPruned(f"pruned at step {event.step}, val loss {event.val_loss:.4f}")

    def close(self) -> None:
        pass


@dataclass
class Sweep:
    """One worker of a study: what it trains on, where, how long, and from which space."""

    sources: Sequence[Source]
    sweep_dir: Path
    space: dict[str, Any]
    budget: Budget
    base: Sequence[dict[str, Any]] = ()  # config layers under the space's values (-c, -s)
    log: Callable[[str], None] = print

    def objective(self, trial: Any) -> float:
        values = suggest(trial, self.space)
        layers = [*self.base, *(nested(key, value) for key, value in values.items()), self.budget.layer()]
        run_dir = self.sweep_dir / f"trial-{trial.number:04d}"
        for name, value in (("run_dir", str(run_dir)), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(name, value)
        try:
            trial.set_user_attr("config", build_config(layers).to_dict())
            self.log(f"trial {trial.number}: {_describe(values)}")
            result = train(
                self.sources,
                run_dir,
                layers,
                time_limit=self.budget.seconds,
                fresh=True,  # a trial's number is new to the study: a directory there is another study's
                progress_bar=False,
                sinks=[Reporter(trial, self.budget)],
            )
        except SignalError:
            raise
        except CharRNNError as err:
            trial.set_user_attr("error", str(err))
            raise TrialFailed(str(err)) from None
        return result.best_val_loss


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{key.split('.')[-1]}={_short(value)}" for key, value in values.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def open_storage(sweep_dir: Path, storage: str | None, heartbeat: int) -> Any:
    """Optuna's storage: a URL's database, else a journal file (None: SWEEP_DIR's)."""
    optuna = require("optuna", "sweep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if storage is not None and "://" in storage:
        return _database(optuna, storage, heartbeat)
    journal = optuna.storages.journal
    path = Path(storage) if storage else sweep_dir / JOURNAL
    return optuna.storages.JournalStorage(
        journal.JournalFileBackend(str(path), lock_obj=journal.JournalFileOpenLock(str(path)))
    )


def open_study(store: Any, name: str, pruner: str, seed: int | None, warmup: int = 0) -> Any:
    """The study named `name` in `store`, created or joined; the median pruner judges no trial
    before its step `warmup`."""
    optuna = require("optuna", "sweep")
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # workers in parallel: no two alike
    return optuna.create_study(
        storage=store,
        study_name=name,
        direction="minimize",
        sampler=sampler,
        pruner=pruners[pruner](),
        load_if_exists=True,
    )


def _database(optuna: Any, url: str, heartbeat: int, attempts: int = 5) -> Any:
    """Optuna's RDB storage at `url`, its errors as one line without the URL's password. Workers
    started at once on an empty database race to create Optuna's tables; the loser tries again."""
    shown = url.split("@")[-1] if "@" in url else url
    tried = 0
    while True:
        tried += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # in Optuna since 2.9
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, engine_kwargs={"pool_pre_ping": True}
                )
        except ImportError as err:
            missing = err.__cause__ or err
            raise CharRNNError(f"the storage {shown} needs a database driver: {missing}") from None
        except Exception as err:  # SQLAlchemy's errors: a refused connection, a bad URL, a wrong password
            if "already exists" in str(err) and tried < attempts:  # another worker made that table
                time.sleep(0.2 * tried)
                continue
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CharRNNError(f"cannot open the study storage {shown}: {first}") from None


def join_study(study: Any, space: dict[str, Any], budget: Budget) -> None:
    """The first worker records the space and budget; a worker with others is refused."""
    for key, value in (("space", space), ("budget", budget.to_dict())):
        recorded = study.user_attrs.get(key)
        if recorded is None:
            study.set_user_attr(key, value)
        elif recorded != value:
            raise InvalidUsageError(
                f"study {study.study_name} was started with another {key} ({recorded}); give every worker the same one"
            )


def fail_orphans(study: Any, store: Any) -> int:
    """Mark failed the running trials whose worker is gone: with a database, those whose
    heartbeat stopped; with a journal file (no heartbeat), those of this machine whose process
    is no more. Returns how many."""
    optuna = require("optuna", "sweep")
    before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    if isinstance(store, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # in Optuna since 2.9
            optuna.storages.fail_stale_trials(study)
    else:
        study_id = store.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("host") == socket.gethostname() and not _alive(t.user_attrs):
                trial_id = store.get_trial_id_from_study_id_trial_number(study_id, t.number)
                store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))) - before


def _alive(attrs: dict[str, Any]) -> bool:
    pid = attrs.get("pid")
    if not isinstance(pid, int):
        return True  # not started by charrnn: not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(study: Any) -> int:
    """Trials that count towards --trials: finished, pruned, running, and failed by their own
    error (a trial whose worker was killed does not count: another takes its place)."""
    states = {"COMPLETE", "PRUNED", "RUNNING"}
    return sum(t.state.name in states or "error" in t.user_attrs for t in study.get_trials(deepcopy=False))


def run_sweep(
    sources: Sequence[Source],
    sweep_dir: Path,
    trials: int,
    budget: Budget,
    layers: Sequence[dict[str, Any]] = (),
    space: dict[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    seed: int | None = None,
    heartbeat: int = 60,
    log: Callable[[str], None] = print,
) -> Any:
    """Join the study (or start it) and train trials until it has `trials` of them, counting
    every worker's; then write SWEEP_DIR/best.yaml. Returns Optuna's study.

    `layers` are config layers under the space's values (`-c`, `-s`); `space` maps config keys
    to choices, ranges or values (`DEFAULT_SPACE` by default); `storage` is a database URL or a
    journal file (default SWEEP_DIR/study.journal); `study_name` defaults to SWEEP_DIR's name.
    """
    streams = [source.name for source in sources if source.once or source.stream is not None]
    if streams:
        raise InvalidUsageError(f"a sweep reads its corpus once per trial: give files, not {streams[0]}")
    space = dict(DEFAULT_SPACE) if space is None else space
    check_space(space, layers)
    if build_config([*layers, budget.layer()]).train.val_fraction == 0:
        raise InvalidUsageError("a sweep ranks trials by their validation loss: train.val_fraction must be > 0")
    if pruner not in PRUNERS:
        raise InvalidUsageError(f"unknown pruner {pruner!r}: {' | '.join(PRUNERS)}")
    store = open_storage(sweep_dir, storage, heartbeat)
    study = open_study(store, study_name or sweep_dir.resolve().name, pruner, seed, budget.resource_total() // 10)
    sweep = Sweep(sources, sweep_dir, space, budget, layers, log)
    join_study(study, sweep.space, sweep.budget)
    if not study.get_trials(deepcopy=False):  # a new study starts where the config stands
        study.enqueue_trial(starting_point(space, layers), skip_if_exists=True)
    while True:
        orphans = fail_orphans(study, store)
        if orphans:
            sweep.log(f"marked {orphans} trial(s) failed: their worker stopped without finishing them")
        if counted(study) >= trials:
            break
        study.optimize(sweep.objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
        _say_last(study, sweep.log)
    write_best(study, sweep.sweep_dir)
    return study


def _say_last(study: Any, log: Callable[[str], None]) -> None:
    """One line on this worker's trial just finished."""
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == os.getpid()]
    if not mine:
        return
    t = max(mine, key=lambda t: t.number)
    if t.state.name == "COMPLETE":
        best = study.best_trial
        log(f"trial {t.number}: best val loss {t.value:.4f} (the study's best: trial {best.number}, {best.value:.4f})")
    elif t.state.name == "PRUNED":
        last = max(t.intermediate_values, default=None)
        shown = "" if last is None else f" at {last} with val loss {t.intermediate_values[last]:.4f}"
        log(f"trial {t.number}: pruned{shown}")
    else:
        log(f"trial {t.number}: failed: {t.user_attrs.get('error', 'see the messages above')}")


def best_trial(study: Any) -> Any | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return min(complete, key=lambda t: t.value) if complete else None


def write_best(study: Any, sweep_dir: Path) -> Path | None:
    """SWEEP_DIR/best.yaml: the best trial's config, for `charrnn train -c`; None before one completes."""
    best = best_trial(study)
    if best is None or "config" not in best.user_attrs:
        return None
    header = (
        f"# charrnn sweep: the best of study {study.study_name}'s trials so far: trial {best.number},\n"
        f"# best val loss {best.value:.4f}. Train it: charrnn train CORPUS -c {BEST}\n"
    )
    text = header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False)
    path = sweep_dir / BEST
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def trials_table(study: Any) -> str:
    """Every trial of the study, best first: its state, value, steps and the space's values."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: (t.value is None, t.value or 0.0, t.number))
    keys = sorted({key for t in trials for key in t.params})
    header = ("trial", "state", "best val", "steps", *(key.split(".")[-1] for key in keys))
    rows = [header]
    for t in trials:
        value = "-" if t.value is None else f"{t.value:.4f}"
        steps = t.user_attrs.get("step")
        shown = f"{steps:,}" if isinstance(steps, int) else "-"
        cells = tuple(_short(t.params[key]) if key in t.params else "-" for key in keys)
        rows.append((str(t.number), t.state.name.lower(), value, shown, *cells))
    return aligned(rows)
