"""One writer per run directory: an exclusive `flock` on `<run>/.lock`.

The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from charrnn.errors import BusyError, CharRNNError


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CharRNNError(f"run directory {self.path.parent} is not writable: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BusyError(f"{self.path.parent} is in use by pid {holder}; try again when it finishes") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
