"""`charrnn runs`: a row per run directory, read without disturbing a `train` that may be
writing it: its model, its training state's meta, its metrics, whether it is training."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charrnn import checkpoint
from charrnn.errors import CharRNNError
from charrnn.metrics import read_metrics
from charrnn.rundir import TRAINING_ORDER, RunDir


def describe_model(config: dict[str, Any]) -> str:
    """`gru 2x256` from a config dict, or "?"."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    try:
        return f"{model['cell']} {int(model['num_layers'])}x{int(model['hidden_size'])}"
    except (KeyError, TypeError, ValueError):
        return "?"


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
    mfu: float | None = None  # the last event's model FLOPs utilisation
    modified: float = 0.0  # Unix time of the newest file
    training: bool = False
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_info(run_dir: Path) -> RunInfo:
    """Everything `charrnn runs` shows about one directory; problems become `problem`, not errors."""
    run = RunDir(run_dir)
    info = RunInfo(run_dir.name, str(run_dir), describe_model(run.read_config()), training=run.is_training())
    info.modified = max((_mtime(p) for p in run_dir.iterdir() if not p.name.startswith(".")), default=0.0)
    problems = []
    found = run.checkpoints(TRAINING_ORDER)
    if found:
        try:
            meta = checkpoint.read_meta(found[0])
            info.step = int(meta["step"])
            info.best_val_loss = meta.get("best_val_loss")
            if info.model == "?":
                info.model = describe_model({"model": meta.get("model", {})})
        except (CharRNNError, KeyError, TypeError, ValueError) as err:
            problems.append(str(err))
    else:
        problems.append("no checkpoint")
    try:
        events = read_metrics(run.metrics)
        vals = [e["val_loss"] for e in events if isinstance(e.get("val_loss"), float) and math.isfinite(e["val_loss"])]
        speeds = [e["chars_per_sec"] for e in events if isinstance(e.get("chars_per_sec"), (int, float))]
        info.last_val_loss = vals[-1] if vals else None
        info.chars_per_sec = speeds[-1] if speeds else None
        shares = [e["mfu"] for e in events if isinstance(e.get("mfu"), (int, float))]
        info.mfu = shares[-1] if shares else None
        if info.step is None:
            info.step = events[-1]["step"]
    except CharRNNError as err:
        problems.append(str(err).replace(f"{run.metrics}: ", "").replace(f"{run_dir}: ", ""))
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
    dirs = [d for d in root.iterdir() if RunDir(d).is_run()]
    return sorted((run_info(d) for d in dirs), key=lambda r: r.modified, reverse=True)


def format_table(rows: list[RunInfo], now: float | None = None) -> str:
    """The runs as an aligned text table."""
    now = time.time() if now is None else now
    header = ("run", "model", "steps", "best val", "last val", "chars/s", "MFU", "written", "state")
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
                "-" if r.mfu is None else f"{100 * r.mfu:.1f}%",
                _ago(now - r.modified) if r.modified else "-",
                state,
            )
        )
    return aligned(lines)


def aligned(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells (the first row the header) as text columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]).rstrip()
        for row in rows
    )


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"
