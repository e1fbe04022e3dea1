"""Scoring records (lines, paragraphs, files) one by one, many at a time as parallel streams.

Each record is scored on its own from the model's start state (the zero state fed a newline;
see `charrnn.vocab.Vocab.start_id`), and every one of its characters is predicted, the first
one included: its loss is the mean of -log p(char | start, preceding chars of the record), in
nats per character. So a record's score does not depend on the records around it.

Records are read as the input comes, a block at a time; inside a block they are sorted by
length and cut into batches of similar length, each run as parallel streams (right-padded;
padding positions come after a record's end, so they cannot change its loss), in chunks of
`CHUNK_STEPS` steps with the state carried. Results come out in input order, block by block,
so memory depends on the block size, not on the input's. A record longer than `LONG_RECORD`
characters (a huge line, a whole file) runs alone, piece by piece, with the state carried
(`long_nll`); read from a source, it waits in a temporary file (`charrnn.data.LongText`), and
its output is written piece by piece: memory stays flat whatever the length of one record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from charrnn.data import Source, Text, pieces, source_records
from charrnn.evaluate import sum_xent
from charrnn.layers.loss import log_softmax_at
from charrnn.model import CharRNN
from charrnn.vocab import Vocab

CHUNK_STEPS = 32  # steps per forward call
MAX_STREAMS = 256  # streams per batch (measured fastest with CHUNK_STEPS for a GRU 2x256 here)
LOGIT_BUDGET = 1 << 22  # logits per forward call (16 MiB of float32): fewer streams for large vocabularies
BLOCK_RECORDS = 4096  # records read before a block is scored
BLOCK_CHARS = 1 << 20  # ... or characters
LONG_RECORD = 1 << 16  # characters past which a record is scored on its own, piece by piece
LONG_CHUNK_STEPS = 1024  # steps per forward call for such a record (one stream)


@dataclass(frozen=True)
class RecordScore:
    """One record's score. `loss` is nats per character: `inf` when the record holds characters
    outside the vocabulary (`unknown` counts them), `nan` for an empty record."""

    text: Text
    loss: float
    chars: int
    unknown: int = 0
    file: str | None = None

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    def tsv_pieces(self) -> Iterator[str]:
        """`loss<TAB>chars<TAB>text`, with backslash, tab, CR and newline in the text escaped, in
        pieces (a long record's text is never one string)."""
        yield f"{self.loss:.6f}\t{self.chars}\t"
        for piece in pieces(self.text):
            yield piece.translate(_ESCAPES)

    def json_pieces(self) -> Iterator[str]:
        """One JSON object {"loss", "bpc", "chars", "unknown", "text"[, "file"]}, in pieces; loss
        and bpc are null where they are not finite (empty, unknown)."""
        finite = math.isfinite(self.loss)
        head = {"loss": self.loss if finite else None, "bpc": self.bpc if finite else None}
        head |= {"chars": self.chars, "unknown": self.unknown}
        yield json.dumps(head, ensure_ascii=False)[:-1] + ', "text": "'
        for piece in pieces(self.text):
            yield json.dumps(piece, ensure_ascii=False)[1:-1]
        yield '"' + ("" if self.file is None else f', "file": {json.dumps(self.file, ensure_ascii=False)}') + "}"

    def to_tsv(self) -> str:
        return "".join(self.tsv_pieces())

    def to_json(self) -> str:
        return "".join(self.json_pieces())


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def score_records(model: CharRNN, vocab: Vocab, records: Iterable[Text]) -> Iterator[RecordScore]:
    """The score of every record, in input order, streaming (see the module docstring)."""
    return (score for scores in _blocks(model, vocab, ((r, None) for r in records)) for score in scores)


def score_sources(model: CharRNN, vocab: Vocab, sources: Sequence[Source], by: str) -> Iterator[RecordScore]:
    """`score_records` over the records of `sources`; with by="file" each score names its file."""
    named = ((text, name if by == "file" else None) for text, name in source_records(sources, by))
    return (score for scores in _blocks(model, vocab, named) for score in scores)


def _blocks(model: CharRNN, vocab: Vocab, records: Iterable[tuple[Text, str | None]]) -> Iterator[list[RecordScore]]:
    block: list[tuple[Text, str | None]] = []
    chars = 0
    for record in records:
        block.append(record)
        chars += len(record[0])
        if len(block) >= BLOCK_RECORDS or chars >= BLOCK_CHARS:
            yield _score_block(model, vocab, block)
            block, chars = [], 0
    if block:
        yield _score_block(model, vocab, block)


def _score_block(model: CharRNN, vocab: Vocab, block: Sequence[tuple[Text, str | None]]) -> list[RecordScore]:
    nll = np.full(len(block), np.nan)
    unknown = [0] * len(block)
    short = [k for k, (text, _) in enumerate(block) if len(text) <= LONG_RECORD]
    for k, (text, _) in enumerate(block):
        if len(text) > LONG_RECORD:
            nll[k], unknown[k] = long_nll(model, vocab, text)
    lengths = [len(block[k][0]) for k in short]
    joined = "".join(block[k][0] for k in short)  # type: ignore[misc] (short records are strings)
    pieces_by_record = np.split(vocab.lookup(joined), np.cumsum(lengths)[:-1]) if short else []
    ids = dict(zip(short, pieces_by_record, strict=True))
    for k, i in ids.items():
        unknown[k] = int((i < 0).sum())
        nll[k] = np.inf if unknown[k] else nll[k]
    scorable = sorted((k for k, i in ids.items() if len(i) and not unknown[k]), key=lambda k: len(ids[k]))
    streams = max(1, min(MAX_STREAMS, LOGIT_BUDGET // (CHUNK_STEPS * len(vocab))))
    for first in range(0, len(scorable), streams):
        batch = scorable[first : first + streams]
        nll[batch] = sequence_nll(model, vocab.start_id, [ids[k] for k in batch])
    return [
        RecordScore(text, float(nll[k] / len(text)) if len(text) else math.nan, len(text), unknown[k], name)
        for k, (text, name) in enumerate(block)
    ]


def long_nll(model: CharRNN, vocab: Vocab, text: Text) -> tuple[float, int]:
    """Summed -log p of every character of one long record, read from the zero state after the
    start id, piece by piece with the state and the last id carried: memory does not grow with
    the record. Returns (nats, unknown characters); inf nats when any is unknown."""
    state, last, total, unknown = model.initial_state(1), np.array([vocab.start_id], np.int64), 0.0, 0
    fed = 0
    for piece in pieces(text):
        ids = vocab.lookup(piece)
        unknown += int((ids < 0).sum())
        if unknown or not len(ids):
            continue  # unknown characters: the rest is only counted
        seq = np.concatenate([last, ids])
        part, state = sum_xent(model, seq[None, :-1], seq[None, 1:], state, LONG_CHUNK_STEPS, reuse_weights=fed > 0)
        total, last, fed = total + part, seq[-1:], fed + len(ids)
    return (math.inf if unknown else total), unknown


def sequence_nll(model: CharRNN, start_id: int, sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Summed -log p of every id of each sequence, each read from the zero state after `start_id`.

    Inputs: B sequences of ids (each >= 1 long). Returns: (B,) float64 nats. The B streams run
    together, right-padded, `CHUNK_STEPS` steps per forward call with the state carried. (One of
    the places a text's cross-entropy is summed: see `evaluate.sum_xent`.)
    """
    B = len(sequences)
    lens = np.array([len(s) for s in sequences])
    T = int(lens.max())
    inputs = np.full((T, B), start_id, np.int64)  # [start, s_0 .. s_{n-2}], then padding
    targets = np.zeros((T, B), np.int64)
    for b, seq in enumerate(sequences):
        inputs[1 : len(seq), b] = seq[:-1]
        targets[: len(seq), b] = seq
    valid = np.arange(T)[:, None] < lens[None, :]  # (T, B)
    total = np.zeros(B)
    state = model.initial_state(B)
    V = model.shape.vocab_size
    for start in range(0, T, CHUNK_STEPS):
        steps = slice(start, start + CHUNK_STEPS)
        logits, state = model.logits(inputs[steps], state, reuse_weights=start > 0)
        _, log_p = log_softmax_at(logits.reshape(V, -1), targets[steps].reshape(-1))
        total -= np.where(valid[steps], log_p.reshape(-1, B), 0).sum(axis=0, dtype=np.float64)
    return total
