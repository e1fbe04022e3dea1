"""`charrnn plot` (read back with matplotlib's own image reader and the SVG's text) and `charrnn runs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, run_cli

from charrnn.metrics import read_metrics

matplotlib = pytest.importorskip("matplotlib")
mpl_image = pytest.importorskip("matplotlib.image")
mpl_colors = pytest.importorskip("matplotlib.colors")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    (folder / "c.txt").write_text("the cat sat on the mat\n" * 300)
    for name, cell in (("alpha", "rnn"), ("beta", "gru")):
        proc = run_cli("train", "c.txt", "-o", f"runs/{name}", *TINY, "-s", f"model.cell={cell}", "--steps", "40",
                       "-q", cwd=folder)  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()
    return folder


def _colour_pixels(image: np.ndarray, colour: str, rect: tuple[float, float, float, float]) -> int:
    """Pixels of `colour` inside the axes rectangle (figure fractions, origin bottom left)."""
    rgb = np.array(mpl_colors.to_rgb(colour))
    height, width = image.shape[:2]
    left, bottom, w, h = rect
    inside = image[
        int(height * (1 - bottom - h)) : int(height * (1 - bottom)), int(width * left) : int(width * (left + w))
    ]
    return int((np.abs(inside[..., :3] - rgb).max(axis=2) < 0.06).sum())


def test_png_has_each_runs_colour_drawn_inside_the_axes(two_runs: Path) -> None:
    from charrnn.plot import AXES_RECT

    proc = run_cli("plot", "runs/alpha", "runs/beta", cwd=two_runs)
    assert proc.returncode == 0, proc.stderr.decode()
    image = mpl_image.imread(two_runs / "runs" / "alpha" / "loss.png")  # the default output
    assert image.shape[0] > 100 and image.shape[1] > 100
    for colour in ("C0", "C1"):
        assert _colour_pixels(image, colour, AXES_RECT) > 150, colour
    assert _colour_pixels(image, "C2", AXES_RECT) == 0  # no third run, no third colour


@pytest.mark.parametrize("axis", ["steps", "chars", "minutes"])
def test_svg_labels_come_from_the_runs(two_runs: Path, axis: str) -> None:
    out = two_runs / f"p-{axis}.svg"
    assert run_cli("plot", "runs/alpha", "runs/beta", "-o", str(out), "--x", axis, cwd=two_runs).returncode == 0
    texts = {"".join(t.itertext()).strip() for t in ET.parse(out).iter("{http://www.w3.org/2000/svg}text")}
    assert {"alpha (rnn 1x16) train", "alpha (rnn 1x16) val", "beta (gru 1x16) val"} <= texts
    assert {"steps": "step", "chars": "characters trained", "minutes": "minutes of training"}[axis] in texts
    assert any(t.startswith("best ") for t in texts)


def _y_ticks(svg: Path) -> list[float]:
    """The y axis's tick labels: the SVG's numeric texts with a decimal point (steps are whole)."""
    texts = [
        "".join(t.itertext()).strip().replace("\u2212", "-")
        for t in ET.parse(svg).iter("{http://www.w3.org/2000/svg}text")
    ]
    return [float(t) for t in texts if t.replace(".", "", 1).replace("-", "", 1).isdigit() and "." in t]


def test_ylim_sets_the_range_shown(two_runs: Path) -> None:
    out = two_runs / "zoom.svg"
    assert run_cli("plot", "runs/alpha", "-o", str(out), "--ylim", "2.2", "2.6", cwd=two_runs).returncode == 0
    ticks = _y_ticks(out)
    assert len(ticks) >= 3 and min(ticks) >= 2.2 and max(ticks) <= 2.6
    assert_clean_error(run_cli("plot", "runs/alpha", "--ylim", "2", "1", cwd=two_runs), 2, "LOW < HIGH")


def test_auto_range_runs_from_the_lowest_loss_to_the_highest_validation_loss(two_runs: Path) -> None:
    """The first training losses (near ln V) would squeeze the curves: they fall off the top."""
    from charrnn.plot import auto_ylim

    train = [(0, 4.2), (10, 2.4), (20, 1.9), (30, 1.5)]
    low, high = auto_ylim([(train, [(10, 2.5), (30, 1.8)]), ([], [(20, 2.0)])])
    assert low == pytest.approx(1.5 - 0.05) and high == pytest.approx(2.5 + 0.05)
    low, high = auto_ylim([(train, [])])  # no validation: from a tenth of the way in
    assert high == pytest.approx(2.4 + 0.045)
    assert auto_ylim([([], [])]) is None
    out = two_runs / "auto.svg"
    assert run_cli("plot", "runs/alpha", "runs/beta", "-o", str(out), cwd=two_runs).returncode == 0
    curves = []
    for run in ("alpha", "beta"):
        events = read_metrics(two_runs / "runs" / run / "metrics.jsonl")
        curves.append(
            tuple([(e["step"], e[key]) for e in events if e.get(key) is not None] for key in ("train_loss", "val_loss"))
        )
    low, high = auto_ylim(curves)
    ticks = _y_ticks(out)
    assert len(ticks) >= 3 and low <= min(ticks) and max(ticks) <= high
    assert high < max(y for points, _ in curves for _, y in points)  # the first training losses are cut


def test_a_half_written_last_line_is_skipped(two_runs: Path, tmp_path: Path) -> None:
    run = tmp_path / "live"
    run.mkdir()
    lines = (two_runs / "runs" / "alpha" / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 45, "train_lo')
    assert len(read_metrics(run / "metrics.jsonl")) == len(lines)
    proc = run_cli("plot", str(run), "-o", str(tmp_path / "live.pdf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "live.pdf").read_bytes().startswith(b"%PDF")


def test_resumed_minutes_add_up_and_a_fresh_restart_starts_over(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    events = [(10, 60.0), (20, 120.0), (30, 30.0), (40, 90.0), (5, 6.0), (10, 12.0)]  # resume, then --fresh
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "elapsed": e}) + "\n" for s, e in events[:4]))
    assert [e["minutes"] for e in read_metrics(run / "metrics.jsonl")] == [1.0, 2.0, 2.5, 3.5]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "elapsed": e}) + "\n" for s, e in events))
    assert [e["step"] for e in read_metrics(run / "metrics.jsonl")] == [5, 10]


def test_plot_errors_are_one_line(two_runs: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("plot", str(tmp_path / "empty"), cwd=tmp_path), 1, "no metrics.jsonl")
    bad = run_cli("plot", str(two_runs / "runs" / "alpha"), "-o", "x.gif", cwd=tmp_path)
    assert_clean_error(bad, 2, ".png")


def test_missing_matplotlib_is_one_line(two_runs: Path) -> None:
    code = "import sys; sys.modules['matplotlib'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "plot", "runs/alpha"], cwd=two_runs, capture_output=True)
    assert_clean_error(proc, 1, "pip install 'charrnn[plot]'")


def test_runs_lists_every_run_newest_first_with_broken_ones_explained(two_runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("alpha", "beta"):
        subprocess.run(["cp", "-a", str(two_runs / "runs" / name), str(root / name)], check=True)
    (root / "broken").mkdir()
    (root / "broken" / "latest.npz").write_bytes(b"PK\x03\x04 not really a zip")
    future = time.time() + 100
    os.utime(root / "beta" / "metrics.jsonl", (future, future))  # the newest
    (root / "not-a-run").mkdir()
    proc = run_cli("runs", str(root), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["name"] for r in rows][:1] == ["beta"] and {r["name"] for r in rows} == {"alpha", "beta", "broken"}
    alpha = next(r for r in rows if r["name"] == "alpha")
    assert alpha["model"] == "rnn 1x16" and alpha["step"] == 40 and alpha["problem"] is None
    assert alpha["best_val_loss"] == pytest.approx(alpha["last_val_loss"]) and alpha["chars_per_sec"] > 0
    assert not alpha["training"]
    broken = next(r for r in rows if r["name"] == "broken")
    assert "corrupt" in broken["problem"] and "no metrics.jsonl" in broken["problem"]
    table = run_cli("runs", str(root), cwd=tmp_path).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["run", "model", "steps"] and table[1].startswith("beta")
    assert "broken:" in next(line for line in table if line.startswith("broken"))


def test_runs_shows_a_run_that_train_holds_as_training(two_runs: Path, tmp_path: Path) -> None:
    """The lock is looked at, never taken: a train that starts meanwhile is not refused."""
    import fcntl

    run = two_runs / "runs" / "alpha"
    with open(run / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as train holds it
        rows = [json.loads(line) for line in run_cli("runs", "runs", "--json", cwd=two_runs).stdout.splitlines()]
        assert next(r for r in rows if r["name"] == "alpha")["training"] is True
    rows = [json.loads(line) for line in run_cli("runs", "runs", "--json", cwd=two_runs).stdout.splitlines()]
    assert next(r for r in rows if r["name"] == "alpha")["training"] is False
