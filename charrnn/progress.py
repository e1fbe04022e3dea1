"""Training progress on stderr: a tqdm bar on a terminal, a few plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from charrnn.metrics import Event


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Shows step, loss, val loss, chars/s and ETA. `bar=None` means: a bar only on a tty;
    `silent` shows nothing (torchrun's ranks other than 0)."""

    def __init__(
        self, start: int, total: int, bar: bool | None = None, stream: TextIO = sys.stderr, silent: bool = False
    ) -> None:
        self.stream, self.silent = stream, silent
        use_bar = not silent and (stream.isatty() if bar is None else bar)
        self._bar = (
            tqdm(total=total, initial=start, file=stream, unit="step", dynamic_ncols=True, leave=True)
            if use_bar
            else None
        )
        self.val_loss: float | None = None

    def log(self, message: str) -> None:
        """One line that does not break the bar."""
        if self.silent:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def set_total(self, total: int) -> None:
        """Count to another last step (e.g. the one a time budget allows)."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, step: int) -> None:
        """The bar at `step` (nothing that would wait for an engine's numbers)."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def show(self, event: Event) -> None:
        """A metrics event's numbers in the bar's postfix."""
        if self._bar is None:
            return
        postfix = {"loss": f"{event.train_loss:.3f}", "chars/s": f"{event.chars_per_sec:,.0f}"}
        if self.val_loss is not None:
            postfix["val"] = f"{self.val_loss:.3f}"
        self._bar.set_postfix(postfix, refresh=False)

    def evaluated(self, event: Event, eta: float | None) -> None:
        """A plain line per evaluation: step, losses, speed, time left."""
        self.val_loss = event.val_loss
        val = f"  val {event.val_loss:.4f}" if event.val_loss is not None else ""
        left = f"  eta {format_duration(eta)}" if eta is not None else ""
        self.log(f"step {event.step}  loss {event.train_loss:.4f}{val}  {event.chars_per_sec:,.0f} chars/s{left}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
