"""Experiment tracking beside metrics.jsonl: TensorBoard event files (`log.tensorboard`),
written with TensorBoard's own event writer (the `tensorboard` extra; the numpy path never
imports it), at the steps of metrics.jsonl and under nanoGPT's names:

    train/loss, val/loss, lr, chars_per_sec     scalars, one point per metrics event
    config                                      the run's config as YAML text, at its first step

A resumed run continues the same curves: its first event is TensorBoard's "session start" just
after the step it resumes from, so points written past that step by an earlier invocation
killed before its next checkpoint are dropped by TensorBoard's reader instead of doubling back.
Only the process that writes the run (rank 0 under torchrun) tracks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from charrnn.extras import require
from charrnn.metrics import Event


class TensorBoardLog:
    """Event files in `log_dir` for a run resumed at `first_step` (0: a new run) with `config`."""

    def __init__(self, log_dir: Path, config: dict[str, Any], first_step: int) -> None:
        writer = require("tensorboard.summary.writer.event_file_writer", "tensorboard")
        self._proto = require("tensorboard.compat.proto.event_pb2", "tensorboard")
        self._summary = require("tensorboard.compat.proto.summary_pb2", "tensorboard")
        log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = writer.EventFileWriter(str(log_dir))
        if first_step > 0:
            log = self._proto.SessionLog(status=self._proto.SessionLog.START)
            # TensorBoard's reader drops the points at or past this step: those after the checkpoint
            self._writer.add_event(self._proto.Event(wall_time=time.time(), step=first_step + 1, session_log=log))
        else:
            text = require("tensorboard.plugins.text.summary_v2", "tensorboard")
            summary = text.text_pb("config", yaml.safe_dump(config, sort_keys=False))
            self._writer.add_event(self._proto.Event(wall_time=time.time(), step=0, summary=summary))

    def write(self, event: Event) -> None:
        scalars = {"lr": event.lr, "chars_per_sec": event.chars_per_sec}
        if event.train_loss is not None:
            scalars["train/loss"] = event.train_loss
        if event.evaluated and event.val_loss is not None:
            scalars["val/loss"] = event.val_loss
        values = [self._summary.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        summary = self._summary.Summary(value=values)
        self._writer.add_event(self._proto.Event(wall_time=time.time(), step=event.step, summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
