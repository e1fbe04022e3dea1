"""One writer per run directory: an exclusive `flock` on its lock file (see `charrnn.rundir`).

The kernel drops the lock when its process dies, so a killed run never leaves a stale lock.
`is_locked` asks whether a live process holds it without taking it, for readers such as
`charrnn runs`.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from charrnn.errors import BusyError, CharRNNError


class RunLock:
    """`with RunLock(path):` holds an exclusive lock on the file `path` (created if missing) and
    writes this process's id into it; another holder makes it raise `BusyError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
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


def is_locked(path: Path) -> bool:
    """Whether a live process holds the lock file `path`, without touching the lock (taking it
    even for a moment would make a `train` starting then fail): Linux's /proc/locks lists the
    inodes under flock; elsewhere, whether the pid written in the file is alive."""
    try:
        st = path.stat()
    except OSError:
        return False
    device_inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"
            return any(fields[1] == "FLOCK" and fields[5] == device_inode for fields in map(str.split, f))
    except (OSError, IndexError):
        pass
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False
