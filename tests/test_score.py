"""`charrnn score` and `LanguageModel.score_records`: each record scored on its own from the start
state, batched as parallel streams, in input order; the anomaly-ranking use it exists for."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import make_model, run_cli

import charrnn
from charrnn import data
from charrnn import score as score_module
from charrnn.data import LongText, split_records
from charrnn.layers.loss import log_softmax_at
from charrnn.score import RecordScore, score_records
from charrnn.vocab import Vocab


def _dates(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(1950, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(n)]


@pytest.fixture(scope="module")
def dates_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GRU trained for a few seconds on ISO dates, one per line."""
    folder = tmp_path_factory.mktemp("dates")
    (folder / "dates.txt").write_text("\n".join(_dates(4000, 0)) + "\n")
    args = ["-s", "model.hidden_size=48", "-s", "model.num_layers=1", "-s", "train.batch_size=16"]
    args += ["-s", "train.seq_len=32", "-s", "train.eval_every=100", "--steps", "400", "-q"]
    proc = run_cli("train", "dates.txt", "-o", "run", *args, cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder / "run"


def _one_stream_nll(model, vocab: Vocab, text: str) -> float:
    """The definition, step by step: the zero state fed the start id, then each character."""
    state = model.initial_state(1)
    x, total = vocab.start_id, 0.0
    for char_id in vocab.encode(text).tolist():
        logits, state = model.logits(np.array([[x]]), state)
        total -= float(log_softmax_at(logits.reshape(-1, 1).astype(np.float64), np.array([char_id]))[1][0])
        x = char_id
    return total / len(text)


def test_batched_scores_equal_the_one_stream_definition_whatever_the_neighbours(monkeypatch) -> None:
    vocab = Vocab.from_chars("abcdefg\n")
    model = make_model("lstm", V=len(vocab), scale=1.0)
    rng = np.random.default_rng(0)
    records = ["".join(rng.choice(list("abcdefg"), rng.integers(1, 40))) for _ in range(60)]
    monkeypatch.setattr(score_module, "CHUNK_STEPS", 7)  # chunks carry state across calls
    monkeypatch.setattr(score_module, "MAX_STREAMS", 8)  # many batches of mixed lengths
    batched = [s.loss for s in score_records(model, vocab, records)]
    for record, loss in zip(records, batched, strict=True):
        assert loss == pytest.approx(_one_stream_nll(model, vocab, record), rel=1e-9)
    shuffled = records[::-1]
    assert [s.loss for s in score_records(model, vocab, shuffled)] == pytest.approx(batched[::-1], rel=1e-9)


def test_unknown_characters_score_inf_and_empty_records_nan_without_stopping() -> None:
    vocab = Vocab.from_chars("abc\n")
    model = make_model("gru", V=len(vocab), scale=1.0)
    scores = list(score_records(model, vocab, ["abc", "", "abz", "cab"]))
    assert [s.chars for s in scores] == [3, 0, 3, 3]
    assert math.isfinite(scores[0].loss) and math.isfinite(scores[3].loss)
    assert math.isnan(scores[1].loss)
    assert scores[2].loss == math.inf and scores[2].unknown == 1
    assert scores[1].to_tsv() == "nan\t0\t"
    assert scores[2].to_tsv().startswith("inf\t3\t")
    assert json.loads(scores[2].to_json())["loss"] is None


def test_records_split_by_line_and_paragraph_across_blocks() -> None:
    blocks = ["one\ntw", "o\n\n\nthr", "ee\nfour\n", "\nfive"]
    assert list(split_records(blocks, "line")) == ["one", "two", "", "", "three", "four", "", "five"]
    assert list(split_records(blocks, "paragraph")) == ["one\ntwo", "three\nfour", "five"]
    assert list(split_records(["a\n"], "line")) == ["a"]  # a final newline opens no record


def test_odd_lines_rank_at_the_top(dates_model: Path, tmp_path: Path) -> None:
    """The use itself: a model that knows dates ranks the lines that are not dates first."""
    lines = _dates(200, 1)
    odd = ["31-12-1999", "2020/01/01", "12345678901", "1999-99-99-9", "0000000000"]  # all known characters
    for k, line in enumerate(odd):
        lines.insert(17 + 37 * k, line)
    (tmp_path / "mixed.txt").write_text("\n".join(lines) + "\n")
    proc = run_cli("score", "-m", str(dates_model), "mixed.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert [row[2] for row in rows] == lines  # input order
    ranked = sorted(rows, key=lambda row: -float(row[0]))
    assert {row[2] for row in ranked[: len(odd)]} == set(odd)


def test_score_by_file_agrees_with_eval_of_the_file_after_a_newline(dates_model: Path, tmp_path: Path) -> None:
    """eval predicts every character after the first from the zero state; score predicts every
    character after the start state (the zero state fed a newline): eval of "\\n" + text is score
    of text."""
    text = "\n".join(_dates(30, 2)) + "\n"
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "nl_a.txt").write_text("\n" + text)
    score = run_cli("score", "-m", str(dates_model), "--by", "file", "--json", "a.txt", cwd=tmp_path)
    ev = run_cli("eval", "-m", str(dates_model), "--json", "nl_a.txt", cwd=tmp_path)
    scored, evaluated = json.loads(score.stdout), json.loads(ev.stdout)
    assert scored["file"] == "a.txt" and scored["text"] == text
    assert scored["chars"] == evaluated["chars"] == len(text)
    assert scored["loss"] == pytest.approx(evaluated["loss"], rel=1e-5)


def test_score_cli_escapes_reads_stdin_and_counts_unknown_records(dates_model: Path, tmp_path: Path) -> None:
    data = b"2001-02-03\nhello\n\n1999-01-01\n"
    proc = run_cli("score", "-m", str(dates_model), cwd=tmp_path, input=data)
    assert proc.returncode == 0
    rows = proc.stdout.decode().splitlines()
    assert [row.split("\t")[2] for row in rows] == ["2001-02-03", "hello", "", "1999-01-01"]
    assert rows[1].startswith("inf\t5\t") and rows[2] == "nan\t0\t"
    assert "1 record(s)" in proc.stderr.decode()
    para = run_cli("score", "-m", str(dates_model), "--by", "paragraph", "-", cwd=tmp_path, input=b"1-2\n3\t4\n\n5\n")
    assert [row.split("\t", 2)[2] for row in para.stdout.decode().splitlines()] == ["1-2\\n3\\t4", "5"]


def test_python_api_matches_the_cli(dates_model: Path, tmp_path: Path) -> None:
    lm = charrnn.load(dates_model)
    lines = _dates(5, 3)
    proc = run_cli("score", "-m", str(dates_model), "-", cwd=tmp_path, input=("\n".join(lines) + "\n").encode())
    cli_losses = [float(row.split("\t")[0]) for row in proc.stdout.decode().splitlines()]
    assert lm.score_records(lines) == pytest.approx(cli_losses, abs=1e-6)
    assert lm.score(lines[0]) == pytest.approx(cli_losses[0], abs=1e-6)
    probs = lm.next_char_probs("2001-0")
    assert sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.get) in "0123456789"
    assert list(probs) == sorted(probs, key=probs.get, reverse=True)
    # next_char_probs and score agree: the loss of one character is -log of its probability
    first = lm.next_char_probs("")
    assert lm.score("2") == pytest.approx(-math.log(first["2"]), rel=1e-5)


def test_a_long_record_runs_alone_piece_by_piece_and_scores_as_the_definition(monkeypatch) -> None:
    vocab = Vocab.from_chars("abcdefg\n")
    model = make_model("gru", V=len(vocab), scale=1.0)
    monkeypatch.setattr(score_module, "LONG_RECORD", 50)
    monkeypatch.setattr(score_module, "LONG_CHUNK_STEPS", 16)
    monkeypatch.setattr(data, "BLOCK_CHARS", 37)  # pieces that cut the record anywhere
    rng = np.random.default_rng(1)
    long = "".join(rng.choice(list("abcdefg"), 300))
    records = ["abc", long, long[:100] + "z" + long[:100] + "zz", "", long[:60]]
    scores = list(score_records(model, vocab, records))
    for k in (0, 1, 4):
        assert scores[k].loss == pytest.approx(_one_stream_nll(model, vocab, records[k]), rel=1e-9)
    assert scores[2].loss == math.inf and scores[2].unknown == 3 and scores[2].chars == 203
    assert math.isnan(scores[3].loss)
    (alone,) = score_records(model, vocab, [long])  # a block of one long record and no short one
    assert alone.loss == scores[1].loss


def test_a_record_kept_in_a_file_is_written_as_it_would_be_whole(monkeypatch) -> None:
    monkeypatch.setattr(data, "BLOCK_BYTES", 7)  # read back in pieces that split characters
    text = 'tab\there, "quoted" \\ back\\slash\r\né😀 ' * 5
    long = LongText()
    long.append(text)
    whole, kept = (RecordScore(t, 1.25, len(text), 0, "f.txt") for t in (text, long))
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")
    assert kept.to_tsv() == whole.to_tsv() == f"1.250000\t{len(text)}\t{escaped}"
    record = {"loss": 1.25, "bpc": 1.25 / math.log(2), "chars": len(text), "unknown": 0, "text": text, "file": "f.txt"}
    assert kept.to_json() == whole.to_json() == json.dumps(record, ensure_ascii=False)
