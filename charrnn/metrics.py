"""metrics.jsonl: what training did, one JSON object per line, appended as it happens.

Every event has `step`, `train_loss` (mean over the steps since the last event; null when there
were none), `lr` (the schedule's rate at `step`), `chars_per_sec` (over the same steps), `mfu`
(the model FLOPs utilisation of that speed, `charrnn.flops`) and `elapsed` (seconds since this
`train` started); an evaluation adds `val_loss` (null without validation text) and
`eval_seconds` (the time it took, with writing the checkpoints: the share of a budget that
validation costs). `MetricsLog` writes them; `read_metrics` reads them back while a `train` may
still be writing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError


@dataclass(frozen=True)
class Event:
    """One line of metrics.jsonl; `val_loss` is written only when `evaluated`."""

    step: int
    train_loss: float | None
    lr: float
    chars_per_sec: float
    elapsed: float
    evaluated: bool = False
    val_loss: float | None = None
    eval_seconds: float = 0.0
    mfu: float | None = None  # model FLOPs per second over the machine's peak

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "step": self.step,
            "train_loss": self.train_loss,
            "lr": self.lr,
            "chars_per_sec": self.chars_per_sec,
            "elapsed": self.elapsed,
        }
        if self.mfu is not None:
            event["mfu"] = self.mfu
        if self.evaluated:
            event["val_loss"] = self.val_loss
            event["eval_seconds"] = self.eval_seconds
        return event

    def with_val_loss(self, val_loss: float | None, seconds: float = 0.0) -> Event:
        """The same event, with an evaluation's loss and the seconds it took."""
        return replace(self, evaluated=True, val_loss=val_loss, eval_seconds=seconds)


class MetricsLog:
    """metrics.jsonl open for appending, one flushed line per event. A line cut short by a
    killed run is ended first, so that the next event starts a line of its own. With no path
    (a process that does not write the run), events go nowhere. Each of `sinks` (objects with
    `write(event)` and `close()`: the trackers of `charrnn.tracking`) gets every event too."""

    def __init__(self, path: Path | None, sinks: Sequence[Any] = ()) -> None:
        self._file = open(os.devnull, "w") if path is None else self._open(path)  # noqa: SIM115
        self._sinks = list(sinks)

    @staticmethod
    def _open(path: Path) -> Any:
        cut_short = False
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                cut_short = f.read(1) != b"\n"
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if cut_short:
            file.write("\n")
        return file

    def write(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict()) + "\n")
        self._file.flush()
        for sink in self._sinks:
            sink.write(event)

    def close(self) -> None:
        self._file.close()
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The events of a run's latest training (after the last `--fresh` restart), in order.

    A line that does not parse (the one a live `train` is writing) is skipped. `minutes` is
    added: wall time summed over the invocations (each `train` restarts `elapsed` at 0). No
    file, or no event in it, is an error.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise CharRNNError(f"{path.parent}: no {path.name} (not a run directory, or not trained yet)") from None
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
