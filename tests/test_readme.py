"""The README's Python snippets run as written."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from pathlib import Path

import pytest
from conftest import run_cli

import charrnn

README = Path(__file__).parent.parent / "README.md"


def readme_snippet(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


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
        exec(compile(readme_snippet("## Python API"), "README.md", "exec"), {})
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
    exec(compile(readme_snippet("## Taking a model elsewhere"), "README.md", "exec"), scope)
    probs = charrnn.load(names).next_char_probs(scope["prime"])
    assert scope["next_char"] == max(probs, key=probs.get)
