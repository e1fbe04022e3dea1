"""Inputs: strict UTF-8 reading in blocks, records of any length, compact id encoding, the
train/val split and the batcher."""

from __future__ import annotations

import codecs
import contextlib
import io
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.vocab import Vocab, code_points

BLOCK_BYTES = 1 << 22
BLOCK_CHARS = 1 << 22  # characters per piece when a long text is handed out in pieces
SPILL_CHARS = 1 << 22  # a record longer than this waits in a temporary file, not in memory
UNITS = ("line", "paragraph", "file")  # what a record is (see `source_records`)


@dataclass
class Source:
    """One input: a regular file (`path`, read as often as needed), a stream read once (standard
    input as `stream`; a FIFO or process substitution as `path` with `once`), or bytes (`data`,
    a stream read into memory by `buffered`)."""

    name: str
    path: Path | None = None
    stream: BinaryIO | None = None
    data: bytes | None = None
    once: bool = False

    @property
    def rereadable(self) -> bool:
        return self.stream is None and not self.once

    def open(self) -> contextlib.AbstractContextManager[BinaryIO]:
        if self.stream is not None:
            return contextlib.nullcontext(self.stream)  # standard input stays open
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data or b"")

    def buffered(self) -> Source:
        """This source with all its bytes in memory, for a reader that makes two passes."""
        if self.rereadable:
            return self
        try:
            with self.open() as stream:
                return Source(self.name, data=stream.read())
        except OSError as err:
            raise CharRNNError(f"{self.name}: cannot read: {err.strerror or err}") from None


def stdin_source() -> Source:
    """Standard input as a source; a closed standard input is a usage error."""
    if sys.stdin is None:
        raise InvalidUsageError("standard input is closed, but - asks to read it")
    return Source("<stdin>", stream=sys.stdin.buffer)


def sources_from_args(args: Sequence[str]) -> list[Source]:
    """Turn command-line arguments into sources: `-` is standard input; a FIFO or process
    substitution (`<(zcat log.gz)`) is read once, as a stream. Missing files are errors."""
    if not args:
        raise InvalidUsageError("no corpus given (a file path, or - for standard input)")
    sources = []
    for arg in args:
        if arg == "-":
            sources.append(stdin_source())
            continue
        path = Path(arg)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise InvalidUsageError(f"no such file: {arg}") from None
        except OSError as err:
            raise InvalidUsageError(f"cannot read {arg}: {err.strerror or err}") from None
        if stat.S_ISREG(mode):
            sources.append(Source(arg, path=path))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            sources.append(Source(arg, path=path, once=True))
        else:
            raise InvalidUsageError(f"not a regular file or a stream: {arg}")
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


class LongText:
    """The text of one long record, kept in an anonymous temporary file (UTF-8) instead of in
    memory. `len()` is its length in characters; `pieces()` reads it back in blocks."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (deleted when this object is)
        self._chars = 0

    def append(self, text: str) -> None:
        self._file.write(text.encode("utf-8", "surrogatepass"))
        self._chars += len(text)

    def __len__(self) -> int:
        return self._chars

    def pieces(self) -> Iterator[str]:
        self._file.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        while block := self._file.read(BLOCK_BYTES):
            yield decoder.decode(block)
        yield decoder.decode(b"", final=True)


Text = str | LongText  # a record's text: a string, or a `LongText` past SPILL_CHARS


def pieces(text: Text) -> Iterator[str]:
    """A text in pieces of at most about BLOCK_CHARS characters (empty pieces may occur)."""
    if isinstance(text, LongText):
        yield from text.pieces()
    else:
        for start in range(0, len(text), BLOCK_CHARS):
            yield text[start : start + BLOCK_CHARS]


class _Record:
    """The text of a record being read: pieces in memory, moved to a `LongText` past SPILL_CHARS."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self._parts: list[str] = []
        self._long: LongText | None = None
        self.chars = 0

    def add(self, piece: str) -> None:
        self.chars += len(piece)
        if self._long is not None:
            self._long.append(piece)
            return
        self._parts.append(piece)
        if self.chars > SPILL_CHARS:
            self._long = LongText()
            for part in self._parts:
                self._long.append(part)
            self._parts = []

    def take(self) -> Text:
        """The record's text; starts the next record."""
        text: Text = self._long if self._long is not None else "".join(self._parts)
        self._start()
        return text


def split_records(blocks: Iterable[str], by: str) -> Iterator[Text]:
    """Records of a stream of text blocks: lines (without their newline; a final newline does
    not start another record) or paragraphs (runs of non-empty lines, joined by newlines). A
    record of any length is read in flat memory: past SPILL_CHARS it is a `LongText`."""
    lines = _lines(blocks)
    if by == "line":
        yield from lines
        return
    paragraph, empty = _Record(), True
    for line in lines:
        if len(line):
            if not empty:
                paragraph.add("\n")
            for piece in pieces(line):
                paragraph.add(piece)
            empty = False
        elif not empty:
            yield paragraph.take()
            empty = True
    if not empty:
        yield paragraph.take()


def _lines(blocks: Iterable[str]) -> Iterator[Text]:
    line = _Record()
    for block in blocks:
        parts = block.split("\n")
        if len(parts) > 1:
            line.add(parts[0])
            yield line.take()
            yield from parts[1:-1]  # whole lines inside the block
        line.add(parts[-1])
    if line.chars:
        yield line.take()


def source_records(sources: Sequence[Source], by: str) -> Iterator[tuple[Text, str]]:
    """(record, source name) over all sources, read as a stream; `by` is one of `UNITS`."""
    for source in sources:
        if by == "file":
            whole = _Record()
            for block in iter_text(source):
                whole.add(block)
            yield whole.take(), source.name
        else:
            for record in split_records(iter_text(source), by):
                yield record, source.name


def head(sources: Sequence[Source], chars: int) -> str:
    """The first `chars` characters of the sources, concatenated; nothing after them is read."""
    taken: list[str] = []
    left = chars
    for source in sources:
        for block in iter_text(source):
            taken.append(block[:left])
            left -= len(taken[-1])
            if left == 0:
                return "".join(taken)
    return "".join(taken)


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
