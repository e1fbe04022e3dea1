"""`charrnn viz`: the page is tested in a real browser (headless Chromium: the rendered DOM and a
screenshot), and the unit finder on a model that must learn to count brackets."""

from __future__ import annotations

import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

import charrnn
from charrnn.viz import correlations, trace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)")
HOSTILE = (
    'He said "<script>document.body.dataset.pwned = 1</script>" & left\n'
    '\t(tab) </script><img src=x onerror="document.body.dataset.pwned = 2"> [x]\n'
    "Ünïcödé 😀 漢字 {nested (brackets [here])}\n"
)


def nested(rng: random.Random, depth: int = 0) -> str:
    """A random string of nested parentheses around letters, e.g. `(a(bc)(d))e`."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        if depth < 5 and rng.random() < 0.6:
            parts.append("(" + nested(rng, depth + 1) + ")")
        else:
            parts.append(rng.choice("abcde"))
    return "".join(parts)


def train_brackets(folder: Path, steps: int) -> Path:
    rng = random.Random(0)
    (folder / "b.txt").write_text("\n".join(nested(rng) for _ in range(3000)) + "\n")
    args = ["-s", "model.cell=gru", "-s", "model.num_layers=1", "-s", "model.hidden_size=32"]
    args += ["-s", "train.batch_size=16", "-s", "train.seq_len=64", "-s", "train.lr=0.005"]
    proc = run_cli("train", "b.txt", "-o", f"run{steps}", *args, "--steps", str(steps), "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder / f"run{steps}"


def test_the_unit_finder_finds_a_bracket_counter_only_in_a_trained_model(tmp_path: Path) -> None:
    text = "\n".join(nested(random.Random(5)) for _ in range(150))[:2000]
    best = {}
    for steps in (0, 300):
        lm = charrnn.load(train_brackets(tmp_path, steps))
        units = correlations(trace(lm, text))["bracket/parenthesis depth"]
        best[steps] = abs(units[0][2])
        assert [abs(r) for _, _, r in units] == sorted((abs(r) for _, _, r in units), reverse=True)
    assert best[300] >= 0.7, best
    assert best[0] < 0.7, best


@pytest.fixture(scope="module")
def lstm_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A page of a small trained LSTM over a hostile text (its first line's quotes and brackets)."""
    folder = tmp_path_factory.mktemp("viz")
    (folder / "c.txt").write_text(('He said "hi" (to [them]) and left.\n' * 200) + "漢字 \t\n")
    args = ["-s", "model.cell=lstm", "-s", "model.num_layers=2", "-s", "model.hidden_size=16"]
    args += ["-s", "train.batch_size=8", "-s", "train.seq_len=32"]
    assert run_cli("train", "c.txt", "-o", "run", *args, "--steps", "60", "-q", cwd=folder).returncode == 0
    (folder / "hostile.txt").write_text(HOSTILE)
    proc = run_cli("viz", "-m", "run", "hostile.txt", "-o", "page.html", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder / "page.html", HOSTILE


def test_the_page_is_self_contained(lstm_page) -> None:
    html = lstm_page[0].read_text(encoding="utf-8")
    start = html.index('<script type="application/json" id="charrnn-data">')
    end = html.index("</script>", start)
    blob, page = html[start:end].split(">", 1)[1], html[:start] + html[end:]
    assert "<" not in blob and ">" not in blob  # the text is data: nothing in it can close the script
    for outside in ("http://", "https://", "<link", " src=", "@import", "url("):
        assert outside not in page, outside


class _Spans(HTMLParser):
    """The character spans of #text (text and attributes) and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self.body: dict = {}
        self.buttons = 0
        self._in_span = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "button" and "data-key" in attrs:
            self.buttons += 1
        if tag == "span" and "data-i" in attrs:
            self.spans.append({**attrs, "text": ""})
            self._in_span = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_span = False

    def handle_data(self, data: str) -> None:
        if self._in_span:
            self.spans[-1]["text"] += data


def browse(page: Path, fragment: str = "", *extra: str) -> tuple[_Spans, str]:
    """The DOM headless Chromium renders for page#fragment, and what it logged."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", *extra, "--dump-dom", f"{page.resolve().as_uri()}{fragment}"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    parser = _Spans()
    parser.feed(proc.stdout.decode())
    return parser, proc.stderr.decode()


@needs_browser
def test_every_character_is_shown_as_it_is_with_a_colour_and_nothing_runs(lstm_page) -> None:
    page, text = lstm_page
    dom, log = browse(page)
    assert dom.body.get("data-ready") == "true", dom.body
    assert "data-error" not in dom.body and "data-pwned" not in dom.body, dom.body
    assert "Uncaught" not in log and "CONSOLE" not in log.replace("CONSOLE(0)", ""), log[-2000:]
    assert len(dom.spans) == len(text)
    assert "".join(s["text"] for s in dom.spans) == text  # newlines, tabs, <script> and emoji, in place
    assert all("background-color: rgb(" in s.get("style", "") for s in dom.spans)
    unknown = [s["text"] for s in dom.spans if "unk" in s.get("class", "")]
    assert set(unknown) == set(text) - set(charrnn.load(page.parent / "run").vocab.chars)
    assert dom.buttons >= 3  # the candidate units
    assert dom.body.get("data-view") == "surprise"


@needs_browser
def test_choosing_a_unit_changes_the_colours(lstm_page) -> None:
    page, _ = lstm_page
    surprise, _ = browse(page)
    colours = {}
    for unit in ("L0.h.3", "L1.c.7", "L1.h.7"):
        dom, log = browse(page, f"#{unit}")
        assert dom.body.get("data-view") == unit and "data-error" not in dom.body, (dom.body, log[-1000:])
        colours[unit] = [s["style"] for s in dom.spans]
    assert len({tuple(c) for c in colours.values()}) == 3
    assert colours["L0.h.3"] != [s["style"] for s in surprise.spans]


@needs_browser
def test_a_screenshot_is_not_blank(lstm_page, tmp_path: Path) -> None:
    image_module = pytest.importorskip("matplotlib.image")
    page, _ = lstm_page
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--window-size=1000,700", f"--screenshot={shot}", f"{page.resolve().as_uri()}#L1.c.2@30"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = image_module.imread(shot)[..., :3]
    assert pixels.shape[:2] == (700, 1000)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, colours, panel: not one flat colour


def test_viz_of_an_empty_text_or_a_bad_model_is_one_line(lstm_page, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    proc = run_cli("viz", "-m", str(lstm_page[0].parent / "run"), "empty.txt", "-o", "p.html", cwd=tmp_path)
    assert_clean_error(proc, 2, "empty")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    (tmp_path / "t.txt").write_text("abc")
    assert_clean_error(run_cli("viz", "-m", "bad.npz", "t.txt", "-o", "p.html", cwd=tmp_path), 1, "bad.npz")
    assert not (tmp_path / "p.html").exists()


def test_chars_limits_the_text(lstm_page, tmp_path: Path) -> None:
    run = str(lstm_page[0].parent / "run")
    (tmp_path / "t.txt").write_text("He said hi. " * 100)
    proc = run_cli("viz", "-m", run, "t.txt", "-o", "p.html", "--chars", "50", cwd=tmp_path)
    assert proc.returncode == 0 and "50 characters" in proc.stderr.decode()
    assert_clean_error(run_cli("viz", "-m", run, "t.txt", "-o", "q.html", "--chars", "50001", cwd=tmp_path), 2, "50000")


def test_only_the_shown_text_is_read(lstm_page, tmp_path: Path) -> None:
    """Bytes past the first block are never read: here they are not even UTF-8."""
    with open(tmp_path / "big.txt", "wb") as f:
        f.write(b"He said hi. " * 800_000)  # 9.6 MB: more than one block of 4 MiB
        f.write(b"\xff not UTF-8")
    proc = run_cli("viz", "-m", str(lstm_page[0].parent / "run"), "big.txt", "-o", "p.html", cwd=tmp_path)
    assert proc.returncode == 0 and "5,000 characters" in proc.stderr.decode(), proc.stderr.decode()
