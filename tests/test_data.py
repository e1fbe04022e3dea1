"""Reading (`charrnn.data`): strict UTF-8 with byte offsets, the train/val split, the batcher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from charrnn.data import Batcher, Source, iter_text, read_text, sources_from_args, split_train_val
from charrnn.errors import CharRNNError, InvalidUsageError


def test_invalid_utf8_reports_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo ".encode() + b"\xff rest")
    with pytest.raises(CharRNNError, match=r"byte 0xff at offset 7"):
        read_text([Source(str(path), path=path)])


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
