"""Safe file writing: a file is replaced whole or not at all.

`atomic_write` writes through a temporary file beside the target, named `.<name>.<random>.tmp`,
fsyncs it, renames it over the target and fsyncs the directory. A process killed meanwhile can
leave only such a temporary file behind; `leftover_pattern` is the glob that finds them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CharRNNError

_SUFFIX = ".tmp"


def _prefix(name: str) -> str:
    return f".{name}."


def leftover_pattern(name: str) -> str:
    """The glob of the temporary files that writing `name` (itself a glob or a file name) leaves
    when its writer is killed."""
    return f"{_prefix(name)}*{_SUFFIX}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file in the same directory, fsync, then rename over it.

    Whatever fails (disk full, read-only directory, a signal), the old file is left as it was.
    """
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=_prefix(path.name), suffix=_SUFFIX, delete=False
        ) as tmp:
            tmp_name = tmp.name
            write(tmp)
            os.fchmod(tmp.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise CharRNNError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
