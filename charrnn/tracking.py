"""Experiment tracking beside metrics.jsonl: TensorBoard event files (`log.tensorboard`),
written with TensorBoard's own event writer, and a Weights & Biases run (`log.wandb: PROJECT`),
each an extra that the numpy path never imports, at the steps of metrics.jsonl and under
nanoGPT's names:

    train/loss, val/loss, lr, mfu, chars_per_sec     scalars, one point per metrics event
    config                                      the run's config as YAML text, at its first step

A resumed run continues the same curves. In TensorBoard its first event is a "session start"
just after the step it resumes from, so points written past that step by an earlier invocation
killed before its next checkpoint are dropped by TensorBoard's reader instead of doubling back.
In W&B it resumes the same W&B run, whose id the run directory keeps (`wandb-id`). Only the
process that writes the run (rank 0 under torchrun) tracks.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from charrnn.atomic import atomic_write
from charrnn.errors import CharRNNError
from charrnn.extras import require
from charrnn.metrics import Event

WANDB_ID = "wandb-id"  # in the run directory: the W&B run a resumed run continues


def scalars(event: Event) -> dict[str, float]:
    """An event's numbers under nanoGPT's names (train/loss, val/loss, lr, mfu) and chars_per_sec."""
    values = {"lr": event.lr, "chars_per_sec": event.chars_per_sec}
    if event.mfu is not None:
        values["mfu"] = event.mfu
    if event.train_loss is not None:
        values["train/loss"] = event.train_loss
    if event.evaluated and event.val_loss is not None:
        values["val/loss"] = event.val_loss
    return values


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
        values = [self._summary.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars(event).items()]
        summary = self._summary.Summary(value=values)
        self._writer.add_event(self._proto.Event(wall_time=time.time(), step=event.step, summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbLog:
    """A Weights & Biases run in `project` for the run directory `run_dir`, resumed at
    `first_step` (0: a new run) with `config`. W&B's own settings apply: WANDB_MODE=offline
    keeps it in `<run>/wandb` for `wandb sync`; WANDB_API_KEY or `wandb login` for the cloud."""

    def __init__(self, project: str, run_dir: Path, config: dict[str, Any], first_step: int) -> None:
        wandb = require("wandb", "wandb")
        id_file = run_dir / WANDB_ID
        known = id_file.read_text(encoding="utf-8").strip() if first_step > 0 and id_file.exists() else ""
        run_id = known or secrets.token_hex(4)  # the form of W&B's own ids: 8 lowercase characters
        if not known:
            atomic_write(id_file, lambda f: f.write(run_id.encode("ascii")))
        settings = wandb.Settings(console="off", silent=True)  # standard output stays the command's
        self._run = _started(
            lambda: wandb.init(
                project=project,
                id=run_id,
                resume="allow",
                name=run_dir.resolve().name,
                dir=str(run_dir),
                config=config,
                settings=settings,
            )
        )

    def write(self, event: Event) -> None:
        self._run.log(scalars(event), step=event.step)

    def close(self) -> None:
        self._run.finish()


def _started(start: Callable[[], Any]) -> Any:
    """W&B's run, or its failure (no login, no network) as one line that says what to do."""
    try:
        return start()
    except Exception as err:  # wandb raises its own errors, and others from deep inside
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CharRNNError(
            f"W&B could not start a run ({first}); run `wandb login`, or set WANDB_MODE=offline to keep it local"
        ) from None
