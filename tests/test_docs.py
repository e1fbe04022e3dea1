"""The README and docs/ as a reader meets them: every relative link and anchor leads somewhere,
every command, option and config key is documented within two clicks of the README, and every
Python block runs as written (here, or in the test named beside it in `RUN_ELSEWHERE`)."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from pathlib import Path

import click
import pytest
from conftest import doc_snippet, run_cli

import charrnn
from charrnn.cli import cli
from charrnn.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "RESULTS.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchor of every heading of a Markdown page (lower case, punctuation dropped,
    spaces to hyphens, repeats numbered)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_leads_somewhere(page: Path) -> None:
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no such heading")
    assert not broken


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(ROOT / "README.md")}
    assert set(DOCS.glob("*.md")) <= linked


def test_the_readme_stays_a_five_minute_read() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 320


def _documented(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_and_option_is_documented(name: str) -> None:
    """Each command has a heading in docs/commands.md (serve: docs/serving.md; sweep:
    docs/sweeps.md) naming it, and
    each of its options appears there."""
    page = _documented({"serve": "serving.md", "sweep": "sweeps.md"}.get(name, "commands.md"))
    assert re.search(rf"^#+ .*`charrnn {name}\b", page, re.M), f"no heading for charrnn {name}"
    options = [opt for param in cli.commands[name].params if isinstance(param, click.Option) for opt in param.opts]
    missing = [opt for opt in options if opt.startswith("--") and f"`{opt}" not in page and f" {opt}" not in page]
    assert not missing, f"charrnn {name}: {missing} not documented"


def test_every_config_key_is_documented() -> None:
    page = _documented("configuration.md")
    keys = [f"{section}.{key}" for section, values in Config().to_dict().items() for key in values]
    assert not [key for key in keys if f"`{key}`" not in page]


# Python blocks run by other tests (page, heading): the server's client, against a live server.
RUN_ELSEWHERE = {("serving.md", "# Serving a model"): "test_serve.py"}


def test_every_python_block_is_run_by_a_test() -> None:
    run_here = {("README.md", "## Python API"), ("export.md", "## safetensors"), ("graphs.md", "# The lecture")}
    found = set()
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        heading = None
        for line in page.read_text(encoding="utf-8").splitlines():
            if re.match(r"#{1,6} ", line):
                heading = line
            elif line.startswith("```python"):
                found.add((page.name, heading))
    covered = {(page, next(h for p, h in found if p == page and h.startswith(start))) for page, start in run_here}
    covered |= {(page, next(h for p, h in found if p == page and h.startswith(start))) for page, start in RUN_ELSEWHERE}
    assert found == covered


@pytest.fixture
def names_run(tmp_path: Path) -> Path:
    """runs/names: a GRU 1x64 trained on lower-case names, as the snippet's comment says."""
    rng = random.Random(0)
    stems = ["alice", "albert", "bob", "bonnie", "carol", "carl", "dave", "dora", "eve", "ezra", "quinn"]
    names = [rng.choice(stems) + rng.choice(["", "a", "y", "ie", "o"]) for _ in range(3000)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    args = ["-s", "model.num_layers=1", "-s", "model.hidden_size=64", "-s", "train.batch_size=16"]
    args += ["-s", "train.seq_len=32", "--steps", "300", "-q"]
    proc = run_cli("train", "names.txt", "-o", "runs/names", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path


def test_python_api_snippet_runs_as_written(names_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(names_run)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(doc_snippet("README.md", "## Python API"), "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("<LanguageModel gru 1x64, vocab ") and printed[0].endswith(" gru")
    assert printed[1].startswith("al") and printed[2].startswith("bo")
    assert float(printed[-1]) > 0
    assert os.path.exists("runs/names/best.npz")


def test_pytorch_loading_snippet_runs_as_written(names_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    monkeypatch.chdir(names_run)
    names = str(names_run / "runs" / "names")
    proc = run_cli("export", "-m", names, "model.safetensors", cwd=names_run)
    assert proc.returncode == 0, proc.stderr.decode()
    scope: dict = {}
    exec(compile(doc_snippet("docs/export.md", "## safetensors"), "docs/export.md", "exec"), scope)
    probs = charrnn.load(names).next_char_probs(scope["prime"])
    assert scope["next_char"] == max(probs, key=probs.get)


def test_graphs_snippet_runs_as_written() -> None:
    """The graphs page's example learns its task (more ones than zeros) far above chance."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(doc_snippet("docs/graphs.md", "# The lecture"), "docs/graphs.md", "exec"), {})
    assert float(out.getvalue().split()[0]) > 0.8
