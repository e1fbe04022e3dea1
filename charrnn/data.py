"""Corpora: strict UTF-8 reading, compact id encoding, the train/val split and the batcher."""

from __future__ import annotations

import codecs
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.vocab import Vocab, code_points

BLOCK_BYTES = 1 << 22
UNITS = ("line", "paragraph", "file")  # what a record is (see `source_records`)


@dataclass
class Source:
    """One input: a file path, or standard input (read once, kept in memory)."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data or b"")


def sources_from_args(args: Sequence[str]) -> list[Source]:
    """Turn command-line arguments into sources; `-` is standard input. Missing files are errors."""
    if not args:
        raise InvalidUsageError("no corpus given (a file path, or - for standard input)")
    sources = []
    for arg in args:
        if arg == "-":
            sources.append(Source("<stdin>", data=sys.stdin.buffer.read()))
            continue
        path = Path(arg)
        if not path.exists():
            raise InvalidUsageError(f"no such file: {arg}")
        if not path.is_file():
            raise InvalidUsageError(f"not a regular file: {arg}")
        sources.append(Source(arg, path=path))
    return sources


def iter_text(source: Source, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Decode a source as strict UTF-8 in blocks. A bad byte is an error giving its offset."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes read so far
    try:
        with source.open() as stream:
            while True:
                block = stream.read(block_bytes)
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    bad = offset - pending + err.start
                    byte = err.object[err.start]
                    raise CharRNNError(
                        f"{source.name}: not valid UTF-8: byte 0x{byte:02x} at offset {bad} ({err.reason})"
                    ) from None
                if text:
                    yield text
                if not block:
                    return
                offset += len(block)
    except OSError as err:
        raise CharRNNError(f"{source.name}: cannot read: {err.strerror or err}") from None


def split_records(blocks: Iterable[str], by: str) -> Iterator[str]:
    """Records of a stream of text blocks: lines (without their newline; a final newline does
    not start another record) or paragraphs (runs of non-empty lines, joined by newlines)."""
    lines = _lines(blocks)
    if by == "line":
        yield from lines
        return
    paragraph: list[str] = []
    for line in lines:
        if line:
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    pending = ""
    for block in blocks:
        parts = (pending + block).split("\n")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


def source_records(sources: Sequence[Source], by: str) -> Iterator[tuple[str, str]]:
    """(record, source name) over all sources, read as a stream; `by` is one of `UNITS`."""
    for source in sources:
        if by == "file":
            yield "".join(iter_text(source)), source.name
        else:
            for record in split_records(iter_text(source), by):
                yield record, source.name


def read_text(sources: Sequence[Source]) -> str:
    """The whole text of all sources, concatenated."""
    return "".join(block for source in sources for block in iter_text(source))


def scan(sources: Sequence[Source]) -> tuple[set[str], int]:
    """The set of characters and the number of characters over all sources, streaming."""
    seen = np.zeros(0x110000, bool)  # one flag per Unicode code point
    count = 0
    for source in sources:
        for block in iter_text(source):
            seen[code_points(block)] = True
            count += len(block)
    return {chr(c) for c in np.flatnonzero(seen)}, count


def encode_into(sources: Sequence[Source], vocab: Vocab, out: np.ndarray) -> None:
    """Encode all sources block by block into `out` (n_chars,), e.g. a memory map."""
    pos = 0
    for source in sources:
        for block in iter_text(source):
            out[pos : pos + len(block)] = vocab.encode(block)
            pos += len(block)


def split_train_val(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_fraction` of the ids is validation, the rest training (both views)."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


class Batcher:
    """Cuts training ids into B contiguous streams and serves chunks of T steps in order.

    Stream b covers ids[b*L : (b+1)*L] (+1 for its targets), L = (N - 1) // B; chunk k of every
    stream follows chunk k-1 in the text, so the hidden state carries across chunks
    (truncated BPTT). An epoch is `chunks_per_epoch` chunks; a remainder shorter than T is unused.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int) -> None:
        stream_len = (len(ids) - 1) // batch_size
        self.seq_len = seq_len
        self.chunks_per_epoch = stream_len // seq_len
        if self.chunks_per_epoch < 1:
            need = batch_size * seq_len + 1
            raise CharRNNError(
                f"training text has {len(ids)} characters, shorter than one chunk "
                f"(batch_size * seq_len + 1 = {need}); lower train.batch_size or train.seq_len"
            )
        used = batch_size * stream_len
        self._inputs = ids[:used].reshape(batch_size, stream_len)
        self._targets = ids[1 : used + 1].reshape(batch_size, stream_len)

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk `index` (0 <= index < chunks_per_epoch): inputs and targets, each (T, B) int64."""
        cols = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return (
            np.ascontiguousarray(self._inputs[:, cols].T, dtype=np.int64),
            np.ascontiguousarray(self._targets[:, cols].T, dtype=np.int64),
        )
