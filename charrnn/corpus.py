"""A corpus as ids on disk: encoded once, then memory-mapped by every later epoch and run.

`load_ids` streams the text in blocks (two passes: the character set, then the ids), so memory
does not grow with the corpus. For file corpora the ids go to `<cache_dir>/corpus-<key>.npy`
with a `.json` beside it (the character set, the vocabulary used, the count); the key hashes
each file's absolute path, size and mtime, so an edited file is re-encoded. A cached array is
reused only if it was encoded with the vocabulary now wanted. Standard input and other streams (a
FIFO, process substitution) are read into memory and encoded there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.data import Source, encode_into, iter_text, scan
from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab

CACHE_PREFIX = "corpus-"  # the cache is <cache_dir>/corpus-<key>.npy and corpus-<key>.json
CACHE_GLOB = f"{CACHE_PREFIX}*"


def _key(sources: Sequence[Source]) -> str | None:
    """Identity of file sources by path, size and mtime; None if any source is not a file."""
    if any(s.path is None or not s.rereadable for s in sources):
        return None
    parts = []
    for s in sources:
        st = s.path.stat()
        parts.append(f"{s.path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _encode_to_file(sources: Sequence[Source], vocab: Vocab, count: int, path: Path) -> None:
    """Write the ids of all sources as an .npy, block by block, atomically."""
    header = {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (count,)}

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        written = 0
        for source in sources:
            for block in iter_text(source):
                ids = vocab.encode(block)
                f.write(ids.tobytes())
                written += len(ids)
        if written != count:
            raise CharRNNError(f"the corpus changed while it was being read ({count} then {written} characters)")

    atomic_write(path, write)


def _wanted(chars: set[str], vocab: Vocab | None) -> Vocab:
    return Vocab.from_chars(chars) if vocab is None else vocab.extend(chars)


def load_ids(sources: Sequence[Source], vocab: Vocab | None, cache_dir: Path | None) -> tuple[np.ndarray, Vocab]:
    """The corpus as ids (n,) and its vocabulary: `vocab` extended by new characters, or a new one.

    Returns a read-only memory map when the corpus is files and `cache_dir` is given.
    """
    key = _key(sources) if cache_dir is not None else None
    if key is None:
        sources = [source.buffered() for source in sources]  # two passes: the characters, then the ids
        chars, count = scan(sources)
        _check_nonempty(count)
        wanted = _wanted(chars, vocab)
        ids = np.empty(count, wanted.dtype)
        encode_into(sources, wanted, ids)
        return ids, wanted
    ids_path, meta_path = cache_dir / f"{CACHE_PREFIX}{key}.npy", cache_dir / f"{CACHE_PREFIX}{key}.json"
    meta = None
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta is not None and ids_path.exists():
        chars, count = set(meta["chars"]), meta["count"]
    else:
        chars, count = scan(sources)
    _check_nonempty(count)
    wanted = _wanted(chars, vocab)
    if meta is None or meta.get("vocab") != list(wanted.chars) or not ids_path.exists():
        _remove_stale(cache_dir)
        _encode_to_file(sources, wanted, count, ids_path)
        text = json.dumps({"chars": sorted(chars), "count": count, "vocab": list(wanted.chars)}, ensure_ascii=False)
        atomic_write(meta_path, lambda f: f.write(text.encode()))
    ids = np.load(ids_path, mmap_mode="r")
    if ids.shape != (count,) or ids.dtype != wanted.dtype:
        raise CharRNNError(f"corpus cache {ids_path} is damaged; delete it and run again")
    return ids, wanted


def _check_nonempty(count: int) -> None:
    if count == 0:
        raise CharRNNError("the corpus is empty")


def _remove_stale(cache_dir: Path) -> None:
    """Old caches of a corpus that has since changed: they can be as large as the corpus."""
    for old in cache_dir.glob(CACHE_GLOB):
        with contextlib.suppress(OSError):
            os.unlink(old)
