"""The vocabulary (`charrnn.vocab`): any Unicode, stable ids, strict construction, and
vocabularies beyond 65,536 characters end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import charrnn
from charrnn import checkpoint
from charrnn.errors import CharRNNError, InvalidUsageError
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


@pytest.mark.parametrize("distinct", [20_000, 70_000])
def test_huge_vocabularies_train_sample_eval_and_resume(tmp_path: Path, distinct: int) -> None:
    """CJK-sized (20,000) and beyond uint16 (70,000 distinct code points): ids in uint16 / uint32."""
    blocks = [range(0x4E00, 0xA000), range(0xAC00, 0xD7A4), range(0x20000, 0x2A6E0)]
    chars = [chr(c) for block in blocks for c in block][:distinct]
    rng = random.Random(0)
    text = "".join(chars) + "".join(rng.choice(chars[:50]) + "\n" for _ in range(3000))
    (tmp_path / "cjk.txt").write_text(text, encoding="utf-8")
    args = ["-s", "model.cell=rnn", "-s", "model.hidden_size=8", "-s", "model.num_layers=1"]
    args += [
        "-s",
        "train.batch_size=4",
        "-s",
        "train.seq_len=8",
        "-s",
        "train.eval_every=2",
        "-s",
        "train.eval_chars=2000",
    ]
    for _ in range(2):  # train, then resume
        proc = run_cli("train", "cjk.txt", "-o", "run", *args, "--steps", "2", "-q", cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
    ckpt = checkpoint.load(tmp_path / "run" / "latest.npz")
    assert ckpt.meta["step"] == 4 and len(ckpt.vocab) == distinct + 1
    cache = next((tmp_path / "run").glob("corpus-*.npy"))
    assert np.load(cache, mmap_mode="r").dtype == (np.uint16 if distinct < 65536 else np.uint32)
    out = run_cli("sample", "-m", "run", "-n", "50", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0 and len(out.stdout.decode()) == 50
    (tmp_path / "held.txt").write_text(chars[-1] + chars[0] + chars[distinct // 2] + "\n", encoding="utf-8")
    ev = run_cli("eval", "-m", "run", "held.txt", "--json", cwd=tmp_path)
    assert ev.returncode == 0 and json.loads(ev.stdout)["chars"] == 3
    assert charrnn.load(tmp_path / "run").score(chars[distinct - 1]) > 0


@pytest.mark.parametrize("bad", [{"a": 0, "b": 1}, {"a", "b"}, "ab", ["ab"], ["a", "a"], [1], None])
def test_anything_but_a_list_of_distinct_characters_is_refused(bad: object) -> None:
    """A dict would be taken as its keys and a set in no defined order: both are refused, as the
    user's mistake (InvalidUsageError, exit 2 in the CLI), not as a bare ValueError."""
    with pytest.raises(InvalidUsageError):
        Vocab(bad)  # type: ignore[arg-type]
