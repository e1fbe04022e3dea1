"""The encoded-corpus cache: built once, memory-mapped after, rebuilt when the corpus or the
vocabulary changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from charrnn import corpus
from charrnn.data import Source
from charrnn.errors import CharRNNError
from charrnn.vocab import Vocab


def src(path: Path) -> list[Source]:
    return [Source(str(path), path=path)]


def test_first_load_encodes_then_later_loads_map_the_cache_without_reading_text(tmp_path: Path, monkeypatch) -> None:
    text_path = tmp_path / "t.txt"
    text_path.write_text("héllo wörld\n" * 100)
    ids, vocab = corpus.load_ids(src(text_path), None, tmp_path)
    assert vocab.decode(ids) == text_path.read_text()
    monkeypatch.setattr(corpus, "scan", lambda _: pytest.fail("the cache should have been used"))
    monkeypatch.setattr(corpus, "iter_text", lambda _: pytest.fail("the cache should have been used"))
    again, vocab_again = corpus.load_ids(src(text_path), None, tmp_path)
    assert isinstance(again, np.memmap) and vocab_again == vocab
    np.testing.assert_array_equal(again, ids)


def test_an_edited_corpus_is_reencoded_and_the_stale_cache_removed(tmp_path: Path) -> None:
    text_path = tmp_path / "t.txt"
    text_path.write_text("abc" * 100)
    corpus.load_ids(src(text_path), None, tmp_path)
    (old,) = tmp_path.glob("corpus-*.npy")
    text_path.write_text("abcd" * 100)
    os.utime(text_path, ns=(1, 1))  # even with a different mtime only
    ids, vocab = corpus.load_ids(src(text_path), None, tmp_path)
    assert vocab.decode(ids) == "abcd" * 100
    assert not old.exists() and len(list(tmp_path.glob("corpus-*.npy"))) == 1


def test_a_different_vocabulary_reencodes(tmp_path: Path) -> None:
    text_path = tmp_path / "t.txt"
    text_path.write_text("cab" * 50)
    corpus.load_ids(src(text_path), None, tmp_path)
    old = Vocab(["c", "x"])
    ids, vocab = corpus.load_ids(src(text_path), old, tmp_path)
    assert vocab.chars == ("c", "x", "a", "b")
    assert vocab.decode(ids) == "cab" * 50


def test_stdin_is_encoded_in_memory(tmp_path: Path) -> None:
    ids, vocab = corpus.load_ids([Source("<stdin>", data=b"abcabc")], None, tmp_path)
    assert not isinstance(ids, np.memmap) and vocab.decode(ids) == "abcabc"
    assert not list(tmp_path.glob("corpus-*"))


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CharRNNError, match="empty"):
        corpus.load_ids(src(tmp_path / "e.txt"), None, tmp_path)
