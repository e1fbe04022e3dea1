"""Random bytes and random Unicode never produce a traceback: each command works, or fails with
one line on stderr and exit code 1 or 2. The CLI runs in-process (charrnn.cli.run) for speed."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.cli import run

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def invoke(*args: str) -> tuple[int, str]:
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(args))
    return code, err.getvalue()


def assert_works_or_fails_cleanly(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code != 0:
        assert code in (1, 2), (code, err)
        errors = [line for line in err.splitlines() if line.startswith("charrnn: error: ")]
        assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    corpus = folder / "c.txt"
    corpus.write_text("abc def ghi\n" * 200)
    code, err = invoke("train", str(corpus), "-o", str(folder / "run"), *TINY, "--steps", "3", "-q")
    assert code == 0, err
    return folder / "run"


def _train_on(data: bytes) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_bytes(data)
        return invoke("train", str(path), "-o", f"{folder}/run", *TINY, "--steps", "2", "-q")


@FUZZ
@given(st.binary(max_size=3000))
def test_train_on_random_bytes(data: bytes) -> None:
    assert_works_or_fails_cleanly(*_train_on(data))


@FUZZ
@given(st.text(min_size=0, max_size=1500))
def test_train_on_random_unicode(text: str) -> None:
    assert_works_or_fails_cleanly(*_train_on(text.encode("utf-8")))


@FUZZ
@given(st.one_of(st.binary(max_size=500), st.text(max_size=500).map(lambda t: t.encode("utf-8"))))
def test_eval_random_input(model_dir: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(data)
        assert_works_or_fails_cleanly(*invoke("eval", str(path), "-m", str(model_dir)))


@FUZZ
@given(st.text(max_size=50), st.integers(min_value=0, max_value=30))
def test_sample_with_random_prime(model_dir: Path, prime: str, length: int) -> None:
    assert_works_or_fails_cleanly(*invoke("sample", "-m", str(model_dir), "-p", prime, "-n", str(length)))
