"""The model learns: periodic texts reach near-zero loss and are sampled back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

SMALL = [
    "-s",
    "model.cell=rnn",
    "-s",
    "model.num_layers=1",
    "-s",
    "train.lr=0.01",
    "-s",
    "train.eval_every=50",
    "--seed",
    "0",
    "-q",
]


@pytest.mark.parametrize(
    ("period", "hidden", "batch", "seq_len", "steps", "prime"),
    [
        ("hello\n", 16, 4, 16, 150, "h"),  # the lecture's example: after 'l' comes 'l' or 'o'
        ("the quick brown fox jumps over the lazy dog. ", 64, 8, 32, 300, "the quick"),
    ],
)
def test_periodic_text_is_learned_and_sampled_back_greedily(
    tmp_path: Path, period: str, hidden: int, batch: int, seq_len: int, steps: int, prime: str
) -> None:
    text = period * (4000 // len(period))
    (tmp_path / "p.txt").write_text(text)
    settings = [
        "-s",
        f"model.hidden_size={hidden}",
        "-s",
        f"train.batch_size={batch}",
        "-s",
        f"train.seq_len={seq_len}",
        "-s",
        f"train.max_steps={steps}",
    ]
    proc = run_cli("train", "p.txt", *settings, *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    final = json.loads((tmp_path / "runs/p/metrics.jsonl").read_text().splitlines()[-1])
    assert final["val_loss"] < 0.05
    sample = run_cli("sample", "--greedy", "-p", prime, "-n", "120", cwd=tmp_path)
    assert sample.returncode == 0
    start = text.index(prime)
    assert sample.stdout.decode() == text[start : start + len(prime) + 120]
