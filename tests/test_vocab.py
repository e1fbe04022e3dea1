from __future__ import annotations

import numpy as np
import pytest

from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab, id_dtype


def test_any_unicode_round_trips_with_crlf_kept() -> None:
    text = "안녕하세요 😀 naïve\r\nline two\n"
    vocab = Vocab.from_chars(text)
    assert "\r" in vocab.chars and "\n" in vocab.chars and "😀" in vocab.chars
    assert vocab.decode(vocab.encode(text)) == text


def test_ids_are_in_code_point_order_and_stable() -> None:
    assert Vocab.from_chars("cab").chars == ("a", "b", "c")
    assert Vocab.from_chars("bca") == Vocab.from_chars("abcabc")


def test_json_round_trip() -> None:
    vocab = Vocab.from_chars('héllo\r\n😀"\\')
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_one_hot_is_the_lecture_encoding() -> None:
    vocab = Vocab.from_chars("helo")
    x = vocab.one_hot(vocab.encode("hello"))
    assert x.shape == (5, 4)
    np.testing.assert_array_equal(x.sum(axis=1), 1)
    np.testing.assert_array_equal(x.argmax(axis=1), vocab.encode("hello"))


def test_smallest_id_dtype() -> None:
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16 and id_dtype(70000) == np.uint32
    assert Vocab.from_chars("abc").encode("abc").dtype == np.uint8
    assert Vocab.from_chars(map(chr, range(0x4E00, 0x4E00 + 300))).dtype == np.uint16


def test_unknown_characters_are_listed() -> None:
    with pytest.raises(CharRNNError, match="'x', 'z'"):
        Vocab.from_chars("abc").encode("abzx")


def test_extend_appends_and_keeps_old_ids() -> None:
    old = Vocab.from_chars("bd")
    new = old.extend("abcd")
    assert new.chars == ("b", "d", "a", "c")
    assert new.decode(new.encode("abcd")) == "abcd"
    np.testing.assert_array_equal(new.encode("bd"), old.encode("bd"))
