"""Hardening II: hostile checkpoints that cost nothing, SIGKILL at any moment, readers beside a
live writer, bounded generation, vocabularies beyond 65,536 characters."""

from __future__ import annotations

import contextlib
import io
import json
import random
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

import charrnn
from charrnn import checkpoint
from charrnn import sample as sample_module
from charrnn.cli import run


def invoke(*args: str) -> tuple[int, bytes, str]:
    """The CLI in-process: exit code, stdout bytes, stderr."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(args))
    out.flush()
    return code, out.buffer.getvalue(), err.getvalue()


def _limit_memory(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_small_file_declaring_a_huge_array_is_refused_before_any_allocation(tmp_path: Path, corpus: Path) -> None:
    """A 4.7 MB checkpoint whose param.b_y declares 2^28 float32 (1 GiB of zeros, compressed):
    refused from its header under a 1 GiB address-space limit, naming the entry and both shapes."""
    assert run_cli("train", str(corpus), "-o", "run", *TINY, "--steps", "2", "-q", cwd=tmp_path).returncode == 0
    good = tmp_path / "run" / "best.npz"
    hostile = tmp_path / "hostile.npz"
    n = 2**28
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(hostile, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename != "param.b_y.npy":
                dst.writestr(info.filename, src.read(info))
        with dst.open("param.b_y.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(1 << 24)
            for _ in range(n * 4 // len(zeros)):
                f.write(zeros)
    assert hostile.stat().st_size < 8_000_000
    limit = _limit_memory(1 << 30)
    ok = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-m", str(good), "-n", "5"], cwd=tmp_path,
                        capture_output=True, preexec_fn=limit)  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()  # the limit leaves room for a normal load
    proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-m", str(hostile), "-n", "5"], cwd=tmp_path,
                          capture_output=True, preexec_fn=limit)  # fmt: skip
    vocab_size = len(checkpoint.load(good).vocab)
    assert_clean_error(proc, 1, "param.b_y", f"({n},)", f"({vocab_size},)")


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


def test_sigkill_at_any_moment_resumes_from_the_last_complete_checkpoint(tmp_path: Path, corpus: Path) -> None:
    """20 kills at random moments (startup, steps, evaluations, checkpoint writes): after each, the
    run's checkpoint loads and is never older than the one before, sample and eval work, and the
    temporary files of an interrupted write are removed by the next train."""
    rng = random.Random(0)
    args = ["train", str(corpus), "-o", "run", "-s", "model.hidden_size=128", "-s", "model.num_layers=2"]
    args += ["-s", "train.batch_size=8", "-s", "train.seq_len=16", "-s", "train.eval_every=3", "-q"]
    run_dir = tmp_path / "run"
    steps_seen = [0]
    for _ in range(20):
        before = _leftovers(run_dir) if run_dir.exists() else []
        step_before = steps_seen[-1]
        proc = subprocess.Popen([sys.executable, "-m", "charrnn", *args], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(rng.uniform(0.2, 2.2))  # a random moment, not a timing assertion
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        after = _leftovers(run_dir) if run_dir.exists() else []
        assert len(after) <= 1, (before, after)  # a kill leaves at most the one file it was writing
        if not (run_dir / "latest.npz").exists():
            assert steps_seen[-1] == 0  # nothing was ever saved: starting from zero is right
            continue
        step = checkpoint.load(run_dir / "latest.npz").meta["step"]
        assert step >= steps_seen[-1], [*steps_seen, step]
        if step > step_before:  # this train got as far as saving, so it cleaned up first
            assert not set(before) & set(after), (before, after)
        steps_seen.append(step)
        code, out, err = invoke("sample", "-m", str(run_dir), "-n", "20", "--seed", "1")
        assert code == 0 and len(out.decode()) == 20, err
        code, out, err = invoke("eval", "-m", str(run_dir), str(corpus))
        assert code == 0, err
    assert steps_seen[-1] > 0, steps_seen
    finish = subprocess.run([sys.executable, "-m", "charrnn", *args, "--steps", "1"], cwd=tmp_path, capture_output=True)
    assert finish.returncode == 0, finish.stderr.decode()
    assert checkpoint.load(run_dir / "latest.npz").meta["step"] == steps_seen[-1] + 1  # resumed, not restarted
    assert _leftovers(run_dir) == []
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == steps_seen[-1] + 1  # a line cut by a kill does not swallow the next


def test_readers_never_fail_while_train_writes(tmp_path: Path, corpus: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("safetensors")
    args = [*TINY, "-s", "model.hidden_size=64", "-s", "train.eval_every=2", "-s", "train.log_every=1"]
    writer = subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), "-o", "runs/live", *args,
                               "--time", "25s", "-q"], cwd=tmp_path, stderr=subprocess.PIPE)  # fmt: skip
    live = tmp_path / "runs" / "live"
    try:
        while not (live / "best.npz").exists():
            assert writer.poll() is None, writer.stderr.read().decode()
            time.sleep(0.05)
        readers = {
            "sample": ["sample", "-m", str(live), "-n", "30"],
            "eval": ["eval", "-m", str(live), str(corpus)],
            "score": ["score", "-m", str(live), str(corpus)],
            "runs": ["runs", str(tmp_path / "runs"), "--json"],
            "plot": ["plot", str(live), "-o", str(tmp_path / "p.png")],
            "viz": ["viz", "-m", str(live), str(corpus), "-o", str(tmp_path / "v.html"), "--chars", "300"],
            "export": ["export", "-m", str(live), str(tmp_path / "m.safetensors")],
        }
        rounds = 0
        while writer.poll() is None and rounds < 8:
            for name, reader in readers.items():
                code, _, err = invoke(*reader)
                assert code == 0, (name, err)
            rounds += 1
        assert rounds >= 2
    finally:
        writer.kill()
        writer.wait()
        writer.stderr.close()


def test_many_samples_are_generated_and_handed_out_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate() holds one batch of streams at a time: the first texts come out before the
    second batch starts, so memory does not grow with --num-samples."""
    from conftest import make_model

    from charrnn.vocab import Vocab

    vocab = Vocab.from_chars("abc\n")
    model = make_model("gru", V=4, scale=1.0)
    widths: list[int] = []
    real = model.logits

    def counting(ids, state, reuse_weights=False):
        widths.append(ids.shape[1])
        return real(ids, state, reuse_weights)

    monkeypatch.setattr(model, "logits", counting)
    texts = sample_module.generate(model, vocab, [""] * 250, 10, seed=1, batch_streams=100)
    first = [next(texts) for _ in range(100)]
    assert max(widths) == 100 and len(first) == 100
    calls = len(widths)
    rest = list(texts)
    assert len(rest) == 150 and max(widths[calls:]) == 100 and min(widths[calls:]) == 50


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
