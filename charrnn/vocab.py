"""The one-hot encoder: characters <-> integer ids."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from charrnn.errors import CharRNNError, InvalidUsageError


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ids below `vocab_size`."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise CharRNNError(f"vocabulary of {vocab_size} characters is too large")


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32 (lone surrogates included, as their own code)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def describe_chars(chars: Iterable[str], limit: int = 20) -> str:
    """A readable list of characters: 'a', '\\n', '😀' ..."""
    shown = [repr(ch) for ch in sorted(set(chars))]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


class Vocab:
    """Characters in id order. Built sorted by code point; `extend` appends, so old ids keep
    their meaning. Any Unicode character is a character (CR and LF are two).

    `chars` is a list or tuple of distinct one-character strings; anything else (a dict, whose
    keys would be taken, a set, whose order is not the ids') is an `InvalidUsageError`."""

    def __init__(self, chars: list[str] | tuple[str, ...]) -> None:
        if not isinstance(chars, (list, tuple)):
            raise InvalidUsageError(f"a vocabulary is a list of characters in id order, not a {type(chars).__name__}")
        self.chars: tuple[str, ...] = tuple(chars)
        if any(not isinstance(ch, str) or len(ch) != 1 for ch in self.chars):
            raise InvalidUsageError("a vocabulary must hold one-character strings only")
        if len(set(self.chars)) != len(self.chars):
            raise InvalidUsageError("a vocabulary must not hold a character twice")
        codes = np.array([ord(ch) for ch in self.chars], dtype=np.int64)
        # id of every code point up to the largest known one; -1 for unknown (the last entry
        # catches everything beyond). At most 4.4 MB, for a vocabulary reaching U+10FFFF.
        self._ids_by_code = np.full(int(codes.max(initial=-1)) + 2, -1, np.int32)
        self._ids_by_code[codes] = np.arange(len(codes), dtype=np.int32)

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> Vocab:
        """The vocabulary of a set of characters, in code-point order."""
        return cls(sorted(set(chars)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    @property
    def start_id(self) -> int:
        """What every generation, score and next-character query is fed first: the newline's id,
        so the model starts as at the beginning of a line; -1 ("no input", a zero one-hot vector)
        for a vocabulary without a newline."""
        return self.chars.index("\n") if "\n" in self.chars else -1

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(len(self))

    def lookup(self, text: str) -> np.ndarray:
        """ids (len(text),) int32, -1 for each character outside the vocabulary."""
        codes = code_points(text)
        return self._ids_by_code[np.minimum(codes, len(self._ids_by_code) - 1)]

    def encode(self, text: str) -> np.ndarray:
        """ids (len(text),) in the smallest dtype. Unknown characters raise an error listing them."""
        ids = self.lookup(text)
        if ids.size and ids.min() < 0:
            codes = code_points(text)
            unknown = {chr(c) for c in codes[ids < 0]}
            raise CharRNNError(f"characters not in the model's vocabulary: {describe_chars(unknown)}")
        return ids.astype(self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def one_hot(self, ids: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """ids (...) -> (..., V) with a single 1 per row (the lecture's input encoding)."""
        return np.eye(len(self), dtype=dtype)[ids]

    def extend(self, chars: Iterable[str]) -> Vocab:
        """This vocabulary plus the new characters among `chars`, appended in code-point order."""
        known = set(self.chars)
        return Vocab(self.chars + tuple(sorted(set(chars) - known)))

    def to_json(self) -> str:
        return json.dumps(list(self.chars), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(json.loads(text))
