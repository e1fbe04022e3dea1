"""Reading (`charrnn.data`): strict UTF-8 with byte offsets, the train/val split, the batcher."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from charrnn import data
from charrnn.data import (
    BLOCK_BYTES,
    Batcher,
    LongText,
    Source,
    head,
    iter_text,
    pieces,
    sources_from_args,
    split_records,
    split_train_val,
)
from charrnn.errors import CharRNNError, InvalidUsageError


def test_invalid_utf8_reports_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo ".encode() + b"\xff rest")
    with pytest.raises(CharRNNError, match=r"byte 0xff at offset 7"):
        list(iter_text(Source(str(path), path=path)))


def test_bad_byte_offset_is_exact_across_block_boundaries() -> None:
    data = "é".encode() * 10 + b"\xe2\x28\xa1"  # a broken 3-byte sequence at offset 20
    for block in (1, 2, 3, 7, 64):
        with pytest.raises(CharRNNError, match="at offset 20"):
            list(iter_text(Source("x", data=data), block_bytes=block))


def test_truncated_sequence_at_end_is_an_error() -> None:
    with pytest.raises(CharRNNError, match="at offset 3"):
        list(iter_text(Source("x", data=b"abc\xe2\x82")))


def test_multibyte_characters_split_across_blocks_decode() -> None:
    text = "안녕 😀 ünïcode " * 50
    assert "".join(iter_text(Source("x", data=text.encode()), block_bytes=5)) == text


def test_head_reads_only_the_block_it_needs() -> None:
    stream = io.BytesIO(b"x" * (3 * BLOCK_BYTES))
    assert head([Source("<stdin>", stream=stream)], 10) == "x" * 10
    assert stream.tell() == BLOCK_BYTES  # one block read of three
    parts = [Source("a", data=b"abc"), Source("b", data=b"defgh")]
    assert head(parts, 5) == "abcde" and head(parts, 100) == "abcdefgh"


def test_a_record_past_the_spill_size_waits_in_a_file_and_reads_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SPILL_CHARS", 10)
    monkeypatch.setattr(data, "BLOCK_BYTES", 7)  # a LongText reads back in 7-byte blocks
    long_line = "é😀" * 20 + "xyz"
    blocks = ["ab\n", long_line[:15], long_line[15:], "\nshort\n\n", long_line, "\n"]
    lines = list(split_records(blocks, "line"))
    assert [isinstance(r, LongText) for r in lines] == [False, True, False, False, True]
    assert ["".join(pieces(r)) for r in lines] == ["ab", long_line, "short", "", long_line]
    assert len(lines[1]) == len(long_line)
    paragraphs = list(split_records(blocks, "paragraph"))
    assert ["".join(pieces(r)) for r in paragraphs] == [f"ab\n{long_line}\nshort", long_line]


def test_a_fifo_is_a_stream_read_once_and_a_directory_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (source,) = sources_from_args([str(fifo)])
    assert source.once and not source.rereadable
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"one\ntwo\n"))
    writer.start()
    assert source.buffered().data == b"one\ntwo\n"
    writer.join()
    with pytest.raises(InvalidUsageError, match="not a regular file or a stream"):
        sources_from_args([str(tmp_path)])


def test_closed_standard_input_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(InvalidUsageError, match="standard input is closed"):
        sources_from_args(["-"])


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidUsageError, match="no such file"):
        sources_from_args([str(tmp_path / "nope.txt")])


def test_split_keeps_the_last_fraction_for_validation() -> None:
    ids = np.arange(100)
    train, val = split_train_val(ids, 0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))


def test_batcher_streams_are_contiguous_so_state_can_carry() -> None:
    ids = np.arange(1000)
    batcher = Batcher(ids, batch_size=4, seq_len=10)
    L = 999 // 4
    assert batcher.chunks_per_epoch == L // 10
    x0, y0 = batcher.chunk(0)
    x1, _ = batcher.chunk(1)
    assert x0.shape == (10, 4)
    np.testing.assert_array_equal(y0, x0 + 1)  # targets are the next character
    np.testing.assert_array_equal(x1[0], x0[-1] + 1)  # chunk 1 continues chunk 0 in every stream
    np.testing.assert_array_equal(x0[0], np.arange(4) * L)  # stream b starts at b * L


def test_batcher_refuses_a_corpus_shorter_than_one_chunk() -> None:
    with pytest.raises(CharRNNError, match="shorter than one chunk"):
        Batcher(np.arange(40), batch_size=4, seq_len=10)
