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


# ------------------------------------------------------------------ commands added since the first round

TEXT_OR_BYTES = st.one_of(st.binary(max_size=600), st.text(max_size=600).map(lambda t: t.encode("utf-8")))
FILE_NAME = st.text(min_size=0, max_size=30)  # anything a user might type, NUL and slashes included


@FUZZ
@given(TEXT_OR_BYTES, st.sampled_from(["line", "paragraph", "file"]), st.booleans())
def test_score_random_input(model_dir: Path, data: bytes, by: str, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(data)
        args = ["score", "-m", str(model_dir), "--by", by, str(path)] + (["--json"] if as_json else [])
        assert_works_or_fails_cleanly(*invoke(*args))


@FUZZ
@given(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
    st.text(max_size=4),
    st.integers(min_value=0, max_value=20),
)
def test_sample_random_top_p_and_stop(model_dir: Path, top_p: float | str, stop: str, length: int) -> None:
    args = ["sample", "-m", str(model_dir), "--top-p", str(top_p), "--stop", stop, "-n", str(length)]
    assert_works_or_fails_cleanly(*invoke(*args, "--num-samples", "3"))


@FUZZ
@given(TEXT_OR_BYTES, st.text(max_size=3))
def test_sample_random_prime_file(model_dir: Path, data: bytes, stop: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "primes.txt"
        path.write_bytes(data)
        args = ["sample", "-m", str(model_dir), "--prime-file", str(path), "-n", "5"]
        assert_works_or_fails_cleanly(*invoke(*args, *(["--stop", stop] if stop else [])))


@FUZZ
@given(TEXT_OR_BYTES, FILE_NAME, st.sampled_from(["steps", "chars", "minutes"]))
def test_plot_random_metrics_and_names(data: bytes, name: str, axis: str) -> None:
    pytest.importorskip("matplotlib")
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        (run_dir / "metrics.jsonl").write_bytes(data)
        (run_dir / "config.yaml").write_bytes(data[:100])
        assert_works_or_fails_cleanly(*invoke("plot", str(run_dir), "-o", f"{folder}/{name}", "--x", axis))


RUN_FILES = st.sampled_from(["latest.npz", "best.npz", "metrics.jsonl", "config.yaml", ".lock"])


@FUZZ
@given(st.lists(st.tuples(RUN_FILES, TEXT_OR_BYTES), max_size=4))
def test_runs_over_random_run_directories(files: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "runs" / "r"
        run_dir.mkdir(parents=True)
        for name, data in files:
            (run_dir / name).write_bytes(data)
        assert_works_or_fails_cleanly(*invoke("runs", str(Path(folder) / "runs")))
        assert_works_or_fails_cleanly(*invoke("runs", str(Path(folder) / "runs"), "--json"))


@FUZZ
@given(TEXT_OR_BYTES, st.integers(min_value=-3, max_value=400))
def test_viz_random_text(model_dir: Path, data: bytes, chars: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.txt"
        path.write_bytes(data)
        args = ["viz", "-m", str(model_dir), str(path), "-o", f"{folder}/p.html", "--chars", str(chars)]
        assert_works_or_fails_cleanly(*invoke(*args))


@FUZZ
@given(FILE_NAME, st.sampled_from([".onnx", ".safetensors", ".pt", ""]))
def test_export_random_names(model_dir: Path, name: str, suffix: str) -> None:
    pytest.importorskip("onnx")
    with tempfile.TemporaryDirectory() as folder:
        assert_works_or_fails_cleanly(*invoke("export", "-m", str(model_dir), f"{folder}/{name}{suffix}"))


@FUZZ
@given(st.binary(max_size=400), st.one_of(st.none(), st.text(max_size=40)), st.sampled_from([".safetensors", ".pt"]))
def test_import_random_bytes_and_vocabularies(data: bytes, vocab: str | None, suffix: str) -> None:
    pytest.importorskip("safetensors")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"in{suffix}"
        path.write_bytes(data)
        args = ["import", str(path), "-o", f"{folder}/out"]
        if vocab is not None:
            (Path(folder) / "v.json").write_text(vocab)
            args += ["--vocab", f"{folder}/v.json"]
        assert_works_or_fails_cleanly(*invoke(*args))


STATE_DICT_KEYS = [
    "rnn.weight_ih_l0",
    "rnn.weight_hh_l0",
    "rnn.bias_ih_l0",
    "rnn.bias_hh_l0",
    "fc.weight",
    "fc.bias",
    "x",
]
SHAPES = st.dictionaries(st.sampled_from(STATE_DICT_KEYS), st.tuples(st.integers(0, 5), st.integers(0, 13)), max_size=7)


@FUZZ
@given(SHAPES, st.sampled_from(["rnn", "lstm", "gru", "", "nope"]))
def test_import_random_state_dicts(shapes: dict[str, tuple[int, int]], cell: str) -> None:
    """Well-formed safetensors files whose tensors have random names and shapes."""
    numpy_io = pytest.importorskip("safetensors.numpy")
    import numpy as np

    tensors = {k: np.ones(s if "weight" in k else s[:1], np.float32) for k, s in shapes.items()}
    meta = {"vocab": '["a", "b", "c", "\\n"]'} | ({"cell": cell} if cell else {})
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "in.safetensors").write_bytes(numpy_io.save(tensors, meta))
        assert_works_or_fails_cleanly(*invoke("import", f"{folder}/in.safetensors", "-o", f"{folder}/out"))
