"""The command line through a real subprocess: train -> sample -> eval, pipes, and user errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, assert_clean_error, run_cli

from charrnn import checkpoint


def test_train_sample_eval_end_to_end(tmp_path: Path, corpus: Path) -> None:
    proc = run_cli("train", str(corpus), *TINY, "--steps", "30", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""  # stdout stays clean for pipelines
    run = tmp_path / "runs" / "corpus"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "latest.npz", "best.npz", "metrics.jsonl"}
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden_size"] == 16
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "train_loss", "chars_per_sec", "elapsed"} <= set(events[0])
    assert any("val_loss" in e for e in events) and events[-1]["step"] == 30
    meta = checkpoint.load(run / "latest.npz").meta
    assert meta["step"] == 30 and meta["format_version"] == 1

    sample = run_cli("sample", "-n", "50", "--seed", "3", "-p", "the ", cwd=tmp_path)
    assert sample.returncode == 0 and sample.stderr == b""
    text = sample.stdout.decode()
    assert text.startswith("the ") and len(text) == 54
    again = run_cli("sample", "-n", "50", "--seed", "3", "-p", "the ", "-m", str(run), cwd=tmp_path)
    assert again.stdout == sample.stdout

    ev = run_cli("eval", str(corpus), "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr.decode()
    result = json.loads(ev.stdout)
    assert result["chars"] == len(corpus.read_text()) - 1
    assert np.isclose(result["bpc"], result["loss"] / np.log(2))
    assert np.isclose(result["perplexity"], np.exp(result["loss"]))
    assert result["loss"] < np.log(len(set(corpus.read_text())))  # better than uniform


def test_stdin_corpus_and_stdin_eval(tmp_path: Path, corpus: Path) -> None:
    data = corpus.read_bytes()
    proc = run_cli("train", "-", *TINY, "--steps", "10", "-q", cwd=tmp_path, input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "runs" / "stdin" / "best.npz").exists()
    from_file = run_cli("eval", str(corpus), "--json", cwd=tmp_path)
    from_stdin = run_cli("eval", "-", "--json", cwd=tmp_path, input=data)
    assert json.loads(from_file.stdout) == json.loads(from_stdin.stdout)


def test_num_samples_prints_each_sample_separated_by_a_blank_line(tmp_path: Path, corpus: Path) -> None:
    run_cli("train", str(corpus), *TINY, "--steps", "5", "-q", cwd=tmp_path)
    single = run_cli("sample", "--greedy", "-n", "20", "-p", "the", cwd=tmp_path).stdout.decode()
    batch = run_cli("sample", "--greedy", "--num-samples", "3", "-n", "20", "-p", "the", cwd=tmp_path)
    assert batch.stdout.decode() == "\n\n".join([single] * 3)


def test_prime_with_unknown_characters(tmp_path: Path, corpus: Path) -> None:
    run_cli("train", str(corpus), *TINY, "--steps", "5", "-q", cwd=tmp_path)
    assert_clean_error(run_cli("sample", "-p", "Xyz", cwd=tmp_path), 1, "'X'")


def test_eval_lists_characters_outside_the_vocabulary(tmp_path: Path, corpus: Path) -> None:
    run_cli("train", str(corpus), *TINY, "--steps", "5", "-q", cwd=tmp_path)
    (tmp_path / "new.txt").write_text("the cat Q and 😀")
    assert_clean_error(run_cli("eval", "new.txt", cwd=tmp_path), 1, "'Q'", "'😀'")


def test_missing_corpus(tmp_path: Path) -> None:
    assert_clean_error(run_cli("train", "nope.txt", cwd=tmp_path), 2, "no such file: nope.txt")


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(run_cli("train", "empty.txt", cwd=tmp_path), 1, "empty")


def test_corpus_shorter_than_one_chunk(tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("tiny text")
    assert_clean_error(run_cli("train", "short.txt", cwd=tmp_path), 1, "shorter than one chunk")


def test_invalid_utf8_gives_the_offset(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"good text \xc3\x28 more")
    assert_clean_error(run_cli("train", "bad.txt", cwd=tmp_path), 1, "not valid UTF-8", "offset 10")


def test_unknown_config_key(tmp_path: Path, corpus: Path) -> None:
    line = assert_clean_error(run_cli("train", str(corpus), "-s", "model.hiden_size=8", cwd=tmp_path), 2)
    assert "model.hiden_size" in line and "hidden_size" in line
    (tmp_path / "c.yaml").write_text("train:\n  bach_size: 4\n")
    assert_clean_error(run_cli("train", str(corpus), "-c", "c.yaml", cwd=tmp_path), 2, "train.bach_size")


def test_bad_set(tmp_path: Path, corpus: Path) -> None:
    assert_clean_error(run_cli("train", str(corpus), "-s", "model.hidden_size", cwd=tmp_path), 2, "KEY=VALUE")
    assert_clean_error(run_cli("train", str(corpus), "-s", "train.lr=fast", cwd=tmp_path), 2, "train.lr")


def test_sample_without_any_model(tmp_path: Path) -> None:
    assert_clean_error(run_cli("sample", cwd=tmp_path), 2, "no trained model")


def test_sample_into_a_closed_pipe_is_quiet(tmp_path: Path, corpus: Path) -> None:

    run_cli("train", str(corpus), *TINY, "--steps", "5", "-q", cwd=tmp_path)
    proc = subprocess.run(
        f"{sys.executable} -m charrnn sample -n 200000 | head -c 10",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert len(proc.stdout) == 10
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


def test_time_limit_stops_cleanly_and_saves(tmp_path: Path, corpus: Path) -> None:
    proc = run_cli("train", str(corpus), *TINY, "-s", "train.max_steps=100000000", "--time", "2s", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    meta = checkpoint.load(tmp_path / "runs/corpus/latest.npz").meta
    assert 0 < meta["step"] < 100000000


def test_progress_bar_on_a_terminal_plain_lines_otherwise(tmp_path: Path, corpus: Path) -> None:
    import sys

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--steps", "20"],
        cwd=tmp_path,
        stderr=secondary,
        stdout=subprocess.PIPE,
        timeout=120,
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.returncode == 0
    assert b"step/s" in shown or b"s/step" in shown  # tqdm's rate
    assert b"chars/s=" in shown and b"loss=" in shown and b"val=" in shown
    plain = run_cli("train", str(corpus), *TINY, "--steps", "20", "--fresh", cwd=tmp_path).stderr
    assert b"\r" not in plain and b"step 10  loss" in plain


def test_a_usage_error_leaves_no_run_directory(tmp_path: Path, corpus: Path) -> None:
    assert_clean_error(run_cli("train", str(corpus), "-s", "train.seq_len=0", cwd=tmp_path), 2, "train.seq_len")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_cell_trains_resumes_samples_and_evaluates(tmp_path: Path, corpus: Path, cell: str) -> None:
    settings = [*TINY, "-s", f"model.cell={cell}", "-s", "model.num_layers=2", "-s", "model.dropout=0.1", "-q"]
    assert run_cli("train", str(corpus), "-o", "run", "--steps", "6", *settings, cwd=tmp_path).returncode == 0
    assert run_cli("train", str(corpus), "-o", "run", "--steps", "4", *settings, cwd=tmp_path).returncode == 0
    meta = checkpoint.load(tmp_path / "run/latest.npz").meta
    assert meta["model"]["cell"] == cell and meta["step"] == 10
    sample = run_cli("sample", "-m", "run", "-n", "30", "--seed", "1", cwd=tmp_path)
    assert sample.returncode == 0 and len(sample.stdout.decode()) == 30
    ev = run_cli("eval", str(corpus), "-m", "run", "--json", cwd=tmp_path)
    assert ev.returncode == 0 and json.loads(ev.stdout)["loss"] > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with text.txt and run/, a few steps of a tiny model trained on it."""
    folder = tmp_path_factory.mktemp("plumbing")
    (folder / "text.txt").write_text("hello world\nhow are you\n" * 300)
    proc = run_cli("train", "text.txt", "-o", "run", *TINY, "--steps", "5", "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder


def _child(args: list[str], cwd: Path, close: int | None = None, stdout: object = subprocess.PIPE):
    """charrnn ARGS with file descriptor `close` closed before it starts (`<&-`, `>&-`)."""
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        preexec_fn=None if close is None else (lambda: os.close(close)),
        timeout=120,
    )


READ_STDIN = [["score", "-m", "run"], ["score", "-m", "run", "-"], ["eval", "-m", "run", "-"]]
WRITE_STDOUT = [
    ["sample", "-m", "run", "-n", "20"],
    ["score", "-m", "run", "text.txt"],
    ["eval", "-m", "run", "text.txt"],
    ["eval", "-m", "run", "text.txt", "--json"],
    ["runs", "."],
]


@pytest.mark.parametrize("args", [*READ_STDIN, ["sample", "-m", "run", "--prime-file", "-"]])
def test_a_closed_standard_input_is_one_line_and_exit_2(tiny_run: Path, args: list[str]) -> None:
    assert_clean_error(_child(args, tiny_run, close=0), 2, "standard input is closed")


@pytest.mark.parametrize("args", WRITE_STDOUT)
def test_a_closed_standard_output_is_one_line_and_never_exit_0(tiny_run: Path, args: list[str]) -> None:
    assert_clean_error(_child(args, tiny_run, close=1), 1, "standard output is closed")


@pytest.mark.parametrize("args", WRITE_STDOUT)
def test_a_full_device_is_one_line_and_exit_1(tiny_run: Path, args: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        proc = _child(args, tiny_run, stdout=full)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.splitlines() == ["charrnn: error: writing output: No space left on device"]


@pytest.mark.parametrize("args", ["sample -m run -n 100000", "score -m run text.txt text.txt", "runs ."])
def test_a_reader_closing_the_pipe_early_ends_it_quietly(tiny_run: Path, args: str) -> None:
    proc = subprocess.run(
        f"{sys.executable} -m charrnn {args} | head -c 1 >/dev/null; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=tiny_run,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode in (0, 141) and proc.stderr == b""


def test_process_substitution_and_fifos_are_read_as_streams(tiny_run: Path) -> None:
    substituted = f"{sys.executable} -m charrnn score -m run <(printf 'hello\\nworld\\n')"
    proc = subprocess.run(["bash", "-c", substituted], cwd=tiny_run, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [line.split(b"\t")[2] for line in proc.stdout.splitlines()] == [b"hello", b"world"]
    fifo = tiny_run / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["bash", "-c", f"printf 'hello world\\n' > {fifo}"])
    proc = run_cli("eval", "-m", "run", str(fifo), "--json", cwd=tiny_run)
    writer.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["chars"] == len("hello world\n") - 1
