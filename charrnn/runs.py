"""What is in a run directory, read without disturbing a `train` that may be writing it:
its metrics (a half-written last line is skipped), its model, its checkpoints' meta, its lock."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from charrnn import checkpoint
from charrnn.checkpoint import BEST, LATEST
from charrnn.errors import CharRNNError

METRICS, CONFIG, LOCK = "metrics.jsonl", "config.yaml", ".lock"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The events of the run's latest training (after the last `--fresh` restart), in order.

    Every line is one JSON object; a line that does not parse (the one a live `train` is
    writing) is skipped. `minutes` is added: wall time summed over the invocations (each
    `train` restarts `elapsed` at 0). No metrics file, or no event in it, is an error.
    """
    path = run_dir / METRICS
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise CharRNNError(f"{run_dir}: no {METRICS} (not a run directory, or not trained yet)") from None
    except OSError as err:
        raise CharRNNError(f"{path}: cannot read: {err.strerror or err}") from None
    events: list[dict[str, Any]] = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("step"), int):
            events.append(event)
    start = 0  # a step lower than the one before: a --fresh run appended to the same file
    for i in range(1, len(events)):
        if events[i]["step"] < events[i - 1]["step"]:
            start = i
    events = events[start:]
    if not events:
        raise CharRNNError(f"{path}: no metrics yet")
    offset, previous = 0.0, 0.0
    for event in events:
        elapsed = float(event.get("elapsed") or 0.0)
        if elapsed < previous:  # a new invocation (resume)
            offset += previous
        previous = elapsed
        event["minutes"] = (offset + elapsed) / 60
    return events


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict ({} if missing or unreadable)."""
    try:
        data = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_model(config: dict[str, Any]) -> str:
    """`gru 2x256` from a config dict, or "?"."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    try:
        return f"{model['cell']} {int(model['num_layers'])}x{int(model['hidden_size'])}"
    except (KeyError, TypeError, ValueError):
        return "?"


def is_training(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock, without touching the lock (taking it even
    for a moment would make a `train` starting then fail): Linux's /proc/locks lists the inodes
    under flock; elsewhere, whether the pid written in the lock file is alive."""
    lock = run_dir / LOCK
    try:
        st = lock.stat()
    except OSError:
        return False
    device_inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
            return any(fields[1] == "FLOCK" and fields[5] == device_inode for fields in map(str.split, f))
    except (OSError, IndexError):
        pass
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


@dataclass
class RunInfo:
    """One row of `charrnn runs`. `problem` says what is wrong with a broken run directory."""

    name: str
    path: str
    model: str = "?"
    step: int | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    chars_per_sec: float | None = None
    modified: float = 0.0  # Unix time of the newest file
    training: bool = False
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_info(run_dir: Path) -> RunInfo:
    """Everything `charrnn runs` shows about one directory; problems become `problem`, not errors."""
    info = RunInfo(run_dir.name, str(run_dir), describe_model(read_config(run_dir)), training=is_training(run_dir))
    info.modified = max((_mtime(p) for p in run_dir.iterdir() if not p.name.startswith(".")), default=0.0)
    problems = []
    ckpt_path = run_dir / (LATEST if (run_dir / LATEST).exists() else BEST)
    if ckpt_path.exists():
        try:
            meta = checkpoint.read_meta(ckpt_path)
            info.step = int(meta["step"])
            info.best_val_loss = meta.get("best_val_loss")
            if info.model == "?":
                info.model = describe_model({"model": meta.get("model", {})})
        except (CharRNNError, KeyError, TypeError, ValueError) as err:
            problems.append(str(err))
    else:
        problems.append("no checkpoint")
    try:
        events = read_metrics(run_dir)
        vals = [e["val_loss"] for e in events if isinstance(e.get("val_loss"), float) and math.isfinite(e["val_loss"])]
        speeds = [e["chars_per_sec"] for e in events if isinstance(e.get("chars_per_sec"), (int, float))]
        info.last_val_loss = vals[-1] if vals else None
        info.chars_per_sec = speeds[-1] if speeds else None
        if info.step is None:
            info.step = events[-1]["step"]
    except CharRNNError as err:
        problems.append(str(err).replace(f"{run_dir}: ", "").replace(f"{run_dir / METRICS}: ", ""))
    info.problem = "; ".join(problems) or None
    return info


def _mtime(path: Path) -> float:
    """A file's mtime; 0 for one that a writer has just renamed away."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def list_runs(root: Path) -> list[RunInfo]:
    """A row per run directory under `root` (any directory holding a checkpoint, metrics or a
    config), newest first."""
    if not root.is_dir():
        raise CharRNNError(f"no such directory: {root}")
    markers = (LATEST, BEST, METRICS, CONFIG)
    dirs = [d for d in root.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)]
    return sorted((run_info(d) for d in dirs), key=lambda r: r.modified, reverse=True)


def format_table(rows: list[RunInfo], now: float | None = None) -> str:
    """The runs as an aligned text table."""
    now = time.time() if now is None else now
    header = ("run", "model", "steps", "best val", "last val", "chars/s", "written", "state")
    lines = [header]
    for r in rows:
        state = "training" if r.training else ("broken: " + r.problem if r.problem else "")
        lines.append(
            (
                r.name,
                r.model,
                "-" if r.step is None else f"{r.step:,}",
                _loss(r.best_val_loss),
                _loss(r.last_val_loss),
                "-" if r.chars_per_sec is None else f"{r.chars_per_sec:,.0f}",
                _ago(now - r.modified) if r.modified else "-",
                state,
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in lines
    ).rstrip()


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"
