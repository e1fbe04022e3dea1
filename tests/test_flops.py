"""Model FLOPs utilisation (`charrnn.flops`): the FLOPs per character against PyTorch's own FLOP
counter on a reference written with explicit products, the peak measured once and remembered,
and the `mfu` of every metrics event, `charrnn runs` and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn import flops
from charrnn.flops import peak_flops, train_flops_per_char
from charrnn.metrics import read_metrics
from charrnn.model import ModelShape

torch = pytest.importorskip("torch")
flop_counter = pytest.importorskip("torch.utils.flop_counter")


def reference_step(shape: ModelShape, B: int, T: int) -> float:
    """FLOPs that torch.utils.flop_counter counts in a forward and backward pass of a chunk
    (B streams, T steps) through the cells written as products: the first layer's input a row
    lookup (`embedding`), every other product an `mm`. The state carried in takes a gradient,
    so that every product has both of its backward products."""
    torch.manual_seed(0)
    V, H, L = shape.vocab_size, shape.hidden_size, shape.num_layers
    G = flops.GATES[shape.cell] * H
    W_xh = [torch.randn(V if i == 0 else H, G, requires_grad=True) for i in range(L)]
    W_hh = [torch.randn(H, G, requires_grad=True) for _ in range(L)]
    W_hy = torch.randn(H, V, requires_grad=True)
    ids = torch.randint(0, V, (T, B))
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        h = [torch.zeros(B, H, requires_grad=True) for _ in range(L)]
        c = [torch.zeros(B, H, requires_grad=True) for _ in range(L)]
        loss = torch.zeros(())
        for t in range(T):
            x = None
            for i in range(L):
                gx = torch.nn.functional.embedding(ids[t], W_xh[0]) if i == 0 else x @ W_xh[i]
                gh = h[i] @ W_hh[i]
                if shape.cell == "rnn":
                    h[i] = torch.tanh(gx + gh)
                elif shape.cell == "gru":
                    r, z = torch.sigmoid(gx[:, : 2 * H] + gh[:, : 2 * H]).chunk(2, dim=1)
                    n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
                    h[i] = (1 - z) * n + z * h[i]
                else:
                    a, f, g, o = (gx + gh).chunk(4, dim=1)
                    c[i] = torch.sigmoid(f) * c[i] + torch.sigmoid(a) * torch.tanh(g)
                    h[i] = torch.sigmoid(o) * torch.tanh(c[i])
                x = h[i]
            loss = loss + torch.nn.functional.cross_entropy(x @ W_hy, ids[t])
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_flops_per_character_are_what_torchs_counter_counts(cell: str) -> None:
    shape = ModelShape(vocab_size=11, cell=cell, hidden_size=8, num_layers=3)
    B, T = 4, 5
    assert train_flops_per_char(shape) * B * T == reference_step(shape, B, T)


def test_the_issues_figure_for_lstm_2x512() -> None:
    """Issue 38 gives ~20 MFLOP per character for the LSTM 2x512 on tinyshakespeare (65 characters)."""
    assert train_flops_per_char(ModelShape(65, "lstm", 512, 2)) == pytest.approx(19.1e6, rel=0.01)


def test_the_peak_is_measured_once_and_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(flops.PEAK_ENV, raising=False)
    calls = []
    monkeypatch.setattr(flops, "measure", lambda *args: calls.append(args) or 1.5e11)
    assert peak_flops("numpy", "cpu", "float32") == 1.5e11
    assert peak_flops("numpy", "cpu", "float32") == 1.5e11
    assert peak_flops("numpy", "cpu", "float64") == 1.5e11
    assert calls == [("numpy", "cpu", "float32"), ("numpy", "cpu", "float64")]
    remembered = json.loads((tmp_path / "charrnn" / "peak.json").read_text())
    assert len(remembered) == 2 and all(key.startswith("numpy/cpu/float") for key in remembered)
    monkeypatch.setenv(flops.PEAK_ENV, "2e12")
    assert peak_flops("numpy", "cpu", "float32") == 2e12
    (tmp_path / "charrnn" / "peak.json").write_text("{not json")
    monkeypatch.delenv(flops.PEAK_ENV)
    assert peak_flops("numpy", "cpu", "float32") == 1.5e11 and len(calls) == 3  # a broken file: measured again


def test_measuring_a_product_gives_its_flops_per_second() -> None:
    for engine in ("numpy", "torch"):
        measured = flops.measure(engine, "cpu", "float32", n=128, repeats=2)
        assert 1e6 < measured < 1e14  # a real number of FLOP/s for a CPU, not a stub


def test_every_metrics_event_carries_its_mfu_and_runs_shows_it(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("the cat sat on the mat\n" * 100)
    peak = {flops.PEAK_ENV: "1e9"}
    proc = run_cli("train", "c.txt", "-o", "run", *TINY, "--steps", "20", "-q", cwd=tmp_path, env=peak)
    assert proc.returncode == 0, proc.stderr.decode()
    per_char = train_flops_per_char(ModelShape(11, "rnn", 16, 1))
    events = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(events) >= 4
    for event in events:
        assert event["mfu"] == pytest.approx(per_char * event["chars_per_sec"] / 1e9, rel=1e-12)
    row = json.loads(run_cli("runs", ".", "--json", cwd=tmp_path).stdout)
    assert row["mfu"] == events[-1]["mfu"]
    table = run_cli("runs", ".", cwd=tmp_path).stdout.decode().splitlines()
    assert "MFU" in table[0].split() and f"{100 * events[-1]['mfu']:.1f}%" in table[1]
    bad = run_cli("train", "c.txt", "-o", "run2", *TINY, "--steps", "2", cwd=tmp_path, env={flops.PEAK_ENV: "fast"})
    assert_clean_error(bad, 2, "CHARRNN_PEAK_FLOPS must be a number")
