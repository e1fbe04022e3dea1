"""Every knob with its default (the one source of truth), YAML loading, `--set` overrides, validation."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from charrnn.engine import ENGINES
from charrnn.errors import InvalidUsageError
from charrnn.layers import CELLS as CELL_MODULES
from charrnn.model import ModelShape, Regularisers
from charrnn.optim import SLOTS, OptimizerSettings, Schedule

CELLS = tuple(CELL_MODULES)  # the cells and optimizers are those the engine defines
OPTIMIZERS = tuple(SLOTS)
SCHEDULES = ("constant", "step", "cosine")
DTYPES = ("float32", "float64")
DEVICE = r"auto|cpu|cuda(:\d+)?|mps"
MAX_PARAMS = 2_000_000_000  # refuse models whose weights alone would not fit in memory
MAX_CHUNK = 100_000_000  # characters in one training step (B * T): more cannot fit in memory
RATES = ("dropout", "output_dropout", "weight_drop")  # the regularisers model.by_passes may set


@dataclass
class ModelConfig:
    cell: str = "gru"  # rnn | lstm | gru (gru 2x256: the lowest tinyshakespeare val loss in 10 min here)
    hidden_size: int = 256  # H, units per layer
    num_layers: int = 2  # stacked cells
    dropout: float = 0.0  # inverted dropout between layers, training only
    output_dropout: float = 0.0  # dropout on the top layer's output, before the read-out
    locked_dropout: bool = False  # one mask per chunk and stream, shared over its steps (variational)
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices, one mask per chunk
    # Stronger regularisers for longer runs: a list of {passes: P, dropout, output_dropout,
    # weight_drop}; a run planned to make >= P passes over its training text trains with them
    # (see `for_passes`). The plan: --steps, else the end --time measures in its first tenth.
    by_passes: list[dict[str, float]] = field(default_factory=list)

    def for_passes(self, passes: float | None) -> ModelConfig:
        """This model with the regularisers of a run planned for `passes` passes over its training
        text: its own, updated by each `by_passes` entry in turn whose `passes` it reaches.
        Unchanged when `passes` is None (not planned yet)."""
        rates: dict[str, float] = {}
        for rule in self.by_passes:
            if passes is not None and passes >= rule["passes"]:
                rates.update({key: value for key, value in rule.items() if key != "passes"})
        return dataclasses.replace(self, **rates)

    def shape(self, vocab_size: int) -> ModelShape:
        """The shape of this model over a vocabulary of `vocab_size` characters."""
        return ModelShape(vocab_size, self.cell, self.hidden_size, self.num_layers)

    def regularisers(self) -> Regularisers:
        """The noise this model trains with (see `for_passes` for a run's own)."""
        return Regularisers(self.dropout, self.output_dropout, self.locked_dropout, self.weight_drop)


@dataclass
class TrainConfig:
    batch_size: int = 32  # B, parallel streams
    seq_len: int = 64  # T, steps of truncated BPTT per chunk
    optimizer: str = "adam"  # adam | adagrad | sgd
    lr: float = 2e-3  # learning rate
    momentum: float = 0.9  # sgd only
    beta1: float = 0.9  # adam only
    beta2: float = 0.999  # adam only
    eps: float = 1e-8  # adam and adagrad
    grad_clip: float = 5.0  # global gradient-norm limit; 0 disables
    lr_schedule: str = "step"  # constant | step (lr_decay every lr_decay_every steps) | cosine (down to min_lr)
    lr_decay: float = 1.0  # step schedule: multiply lr by this every lr_decay_every steps
    lr_decay_every: int = 1000
    warmup_steps: int = 0  # the lr rises linearly from lr/warmup_steps to lr over these first steps
    min_lr: float = 0.0  # cosine: the lr at the end of the schedule (max_steps, or the end of --time)
    weight_decay: float = 0.0  # decoupled (AdamW-style) decay of the weight matrices, per unit of lr
    max_steps: int = 10_000  # train until this many steps in total
    val_fraction: float = 0.1  # the last fraction of the text is held out
    eval_every: int = 500  # steps between validation runs (and checkpoints)
    eval_chars: int = 1_000_000  # validate on at most this many held-out characters; 0 = all
    log_every: int = 100  # steps between training-loss lines in metrics.jsonl
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    seed: int = 1234  # initialisation, dropout, and everything random
    dtype: str = "float32"  # float32 | float64
    engine: str = "numpy"  # numpy | torch (PyTorch: a GPU, or many processes under torchrun)
    device: str = "auto"  # torch engine: auto (CUDA when torch sees one, else CPU) | cpu | cuda | cuda:N | mps

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.beta1, self.beta2, self.eps, self.momentum, self.weight_decay)

    def schedule(self) -> Schedule:
        return Schedule(
            self.lr,
            self.lr_schedule,
            self.lr_decay,
            self.lr_decay_every,
            self.warmup_steps,
            self.min_lr,
            self.max_steps,
        )


@dataclass
class LogConfig:
    tensorboard: bool | str = (
        False  # true: TensorBoard event files in <run>/tensorboard; or a directory D: D/<run name>
    )
    wandb: str = ""  # a W&B project: the run logged to Weights & Biases (WANDB_MODE=offline: kept in <run>/wandb)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _nearest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(path: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of the default; ints and numeric strings pass as floats."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise InvalidUsageError(f"config key {path}: expected {kind.__name__}, got {value!r}")


def _apply(section: Any, values: dict[str, Any], prefix: str) -> None:
    names = [f.name for f in dataclasses.fields(section)]
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise InvalidUsageError(f"unknown config key {path}{_nearest(str(key), names)}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise InvalidUsageError(f"config key {path}: expected a mapping, got {value!r}")
            _apply(current, value, f"{path}.")
        elif isinstance(value, str) and "str" in str(section.__dataclass_fields__[key].type).split(" | "):
            setattr(section, key, value)  # a key that takes a flag or a string (log.tensorboard)
        else:
            setattr(section, key, _coerce(path, value, current))


def _check(ok: bool, path: str, rule: str, value: Any) -> None:
    if not ok:
        raise InvalidUsageError(f"config key {path}: must be {rule}, got {value!r}")


def validate(config: Config) -> None:
    """Refuse values that cannot work, before any work starts."""
    m, t = config.model, config.train
    _check(m.cell in CELLS, "model.cell", " | ".join(CELLS), m.cell)
    _check(m.hidden_size >= 1, "model.hidden_size", ">= 1", m.hidden_size)
    _check(m.num_layers >= 1, "model.num_layers", ">= 1", m.num_layers)
    for key in RATES:
        _check(0 <= getattr(m, key) < 1, f"model.{key}", "in [0, 1)", getattr(m, key))
    _check_by_passes(m.by_passes)
    approx_params = m.num_layers * 4 * m.hidden_size * 2 * m.hidden_size
    _check(approx_params <= MAX_PARAMS, "model.hidden_size", "small enough to fit in memory", m.hidden_size)
    for key in ("batch_size", "seq_len", "lr_decay_every", "eval_every", "log_every"):
        _check(getattr(t, key) >= 1, f"train.{key}", ">= 1", getattr(t, key))
    for key in ("batch_size", "seq_len"):
        _check(getattr(t, key) <= MAX_CHUNK, f"train.{key}", f"<= {MAX_CHUNK:,}", getattr(t, key))
    chunk = t.batch_size * t.seq_len
    _check(chunk <= MAX_CHUNK, "train.batch_size * train.seq_len", f"<= {MAX_CHUNK:,} characters per step", chunk)
    _check(t.optimizer in OPTIMIZERS, "train.optimizer", " | ".join(OPTIMIZERS), t.optimizer)
    _check(t.lr > 0, "train.lr", "> 0", t.lr)
    _check(0 <= t.momentum < 1, "train.momentum", "in [0, 1)", t.momentum)
    _check(0 <= t.beta1 < 1, "train.beta1", "in [0, 1)", t.beta1)
    _check(0 <= t.beta2 < 1, "train.beta2", "in [0, 1)", t.beta2)
    _check(t.eps > 0, "train.eps", "> 0", t.eps)
    _check(t.grad_clip >= 0, "train.grad_clip", ">= 0", t.grad_clip)
    _check(0 < t.lr_decay <= 1, "train.lr_decay", "in (0, 1]", t.lr_decay)
    _check(t.lr_schedule in SCHEDULES, "train.lr_schedule", " | ".join(SCHEDULES), t.lr_schedule)
    _check(t.warmup_steps >= 0, "train.warmup_steps", ">= 0", t.warmup_steps)
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", "in [0, train.lr]", t.min_lr)
    _check(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    _check(t.max_steps >= 0, "train.max_steps", ">= 0", t.max_steps)
    _check(0 <= t.val_fraction < 1, "train.val_fraction", "in [0, 1)", t.val_fraction)
    _check(t.patience >= 0, "train.patience", ">= 0", t.patience)
    _check(t.eval_chars >= 0, "train.eval_chars", ">= 0", t.eval_chars)
    _check(t.seed >= 0, "train.seed", ">= 0", t.seed)
    _check(t.dtype in DTYPES, "train.dtype", " | ".join(DTYPES), t.dtype)
    _check(t.engine in ENGINES, "train.engine", " | ".join(ENGINES), t.engine)
    _check(re.fullmatch(DEVICE, t.device) is not None, "train.device", "auto | cpu | cuda | cuda:N | mps", t.device)
    tb = config.log.tensorboard
    _check(not isinstance(tb, str) or bool(tb.strip()), "log.tensorboard", "true, false or a directory", tb)
    project = config.log.wandb
    ok = project == "" or (bool(project.strip()) and len(project) <= 128 and not re.search(r"[/\\#?%:]", project))
    _check(ok, "log.wandb", "a W&B project name (at most 128 characters, none of / \\ # ? % :)", project)


def _check_by_passes(rules: list[dict[str, float]]) -> None:
    """model.by_passes: mappings, each with `passes` > 0 (rising from one to the next) and rates
    of the regularisers in RATES."""
    last = 0.0
    for i, rule in enumerate(rules):
        path = f"model.by_passes[{i}]"
        _check(isinstance(rule, dict) and "passes" in rule, path, "a mapping with passes (and rates)", rule)
        for key, value in rule.items():
            if key != "passes" and key not in RATES:
                raise InvalidUsageError(f"unknown config key {path}.{key}{_nearest(str(key), ['passes', *RATES])}")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            _check(number, f"{path}.{key}", "a number", value)
            if key != "passes":
                _check(0 <= value < 1, f"{path}.{key}", "in [0, 1)", value)
        _check(rule["passes"] > last, f"{path}.passes", f"> {last:g} (rising from entry to entry)", rule["passes"])
        last = rule["passes"]


def parse_override(text: str) -> dict[str, Any]:
    """`a.b=value` -> {"a": {"b": value}}, the value read as YAML (so 128 is an int, 1e-3 a float)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InvalidUsageError(f"--set expects KEY=VALUE (e.g. model.hidden_size=256), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return nested(key.strip(), value)


def nested(key: str, value: Any) -> dict[str, Any]:
    """`a.b`, value -> {"a": {"b": value}}: one key's config layer."""
    layer: dict[str, Any] = {}
    node = layer
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return layer


def load_yaml(path: Path) -> dict[str, Any]:
    """A config file as a dict; only plain YAML (safe_load: no Python tags)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidUsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidUsageError(f"cannot read config file {path}: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidUsageError(f"config file {path} is not plain YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidUsageError(f"config file {path}: expected a mapping at the top level")
    return data


def build_config(layers: list[dict[str, Any]]) -> Config:
    """Defaults, then each layer of values in turn (file, then overrides), then validation."""
    config = Config()
    for values in layers:
        _apply(config, values, "")
    validate(config)
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    return build_config([values])
