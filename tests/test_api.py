"""The Python API (`charrnn.load`, `LanguageModel`): which checkpoint it loads, and one order
for generation's arguments (prime(s), length, sampling, seed, stop) across its methods."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import charrnn
from charrnn import Sampling
from charrnn.config import build_config
from charrnn.errors import CharRNNError
from charrnn.model import init_params
from charrnn.rundir import create_run
from charrnn.vocab import Vocab

VOCAB = Vocab.from_chars("abc \n")


def _run(path: Path, seed: int) -> Path:
    """A run directory holding random weights (no training needed to test loading)."""
    config = build_config([{"model": {"cell": "gru", "hidden_size": 8, "num_layers": 1}}])
    shape = config.model.shape(len(VOCAB))
    create_run(path, config, VOCAB, init_params(shape, np.random.default_rng(seed), np.dtype(np.float32)))
    return path


def test_generation_takes_prime_then_length_in_every_method(tmp_path: Path) -> None:
    lm = charrnn.load(_run(tmp_path / "run", 0))
    one = lm.sample("ab", 12, temperature=0.9, seed=3)
    assert 0 < len(one) <= 12
    assert "".join(lm.stream("ab", 12, Sampling(temperature=0.9), 3)) == one
    assert next(lm.samples(["ab"], 12, Sampling(temperature=0.9), 3)) == one
    assert lm.sample(prime="ab", length=12, temperature=0.9, seed=3) == one
    with pytest.raises(TypeError):
        lm.sample("ab", 12, 0.9)  # sampling options are keywords: no silent mix-up with length


def test_load_reads_best_before_latest_and_without_a_path_the_newest_run(tmp_path: Path) -> None:
    old, new = _run(tmp_path / "runs" / "old", 0), _run(tmp_path / "runs" / "new", 1)
    assert charrnn.load(old).path == old / "latest.npz"  # a new run has no best.npz yet
    (old / "latest.npz").rename(old / "best.npz")
    assert charrnn.load(old).path == old / "best.npz"
    os.utime(new / "latest.npz", (1, 1))  # the old run's checkpoint is now the newest
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert charrnn.load().path == Path("runs/old/best.npz")
    finally:
        os.chdir(cwd)


NONSENSE = {
    "negative length": (lambda lm: lm.sample("ab", -5), ValueError),
    "length as a string": (lambda lm: lm.sample("ab", "10"), TypeError),
    "a number as the prime": (lambda lm: lm.sample(5.0), TypeError),
    "a negative length in 0.1.0's order": (lambda lm: lm.sample(-5), ValueError),
    "temperature as a string": (lambda lm: lm.sample("ab", 5, temperature="hot"), TypeError),
    "zero temperature": (lambda lm: lm.sample("ab", 5, temperature=0), ValueError),
    "negative seed": (lambda lm: lm.sample("ab", 5, seed=-1), ValueError),
    "a number as the stop": (lambda lm: lm.sample("ab", 5, stop=3), TypeError),
    "one string as primes": (lambda lm: lm.samples("ab", 5), TypeError),
    "a prefix of None": (lambda lm: lm.next_char_probs(None), TypeError),
    "a text of None": (lambda lm: lm.score(None), TypeError),
    "one string as records": (lambda lm: lm.score_records("abc"), TypeError),
    "a number among records": (lambda lm: lm.score_records(["ab", 3]), TypeError),
    "seq_len 0": (lambda lm: lm.evaluate("abc", seq_len=0), ValueError),
    "an unknown record unit": (lambda lm: lm.score_sources([], by="word"), ValueError),
}


@pytest.mark.parametrize("case", NONSENSE)
def test_nonsense_arguments_raise_charrnn_errors_that_are_type_or_value_errors(tmp_path: Path, case: str) -> None:
    lm = charrnn.load(_run(tmp_path / "run", 0))
    call, kind = NONSENSE[case]
    with pytest.raises(kind) as raised:
        call(lm)
    assert isinstance(raised.value, CharRNNError)


OLD_CALLS = {
    "sample(n, prime=...)": lambda lm: lm.sample(12, prime="ab", temperature=0.9, seed=3),
    "sample(n, prime, temperature, top_k, top_p, stop, seed)": lambda lm: lm.sample(12, "ab", 0.9, 0, 1.0, None, 3),
    "sample(n=..., prime=...)": lambda lm: lm.sample(n=12, prime="ab", temperature=0.9, seed=3),
    "stream(n, prime, sampling, seed)": lambda lm: "".join(lm.stream(12, "ab", Sampling(temperature=0.9), 3)),
    "samples(primes, n=...)": lambda lm: next(lm.samples(["ab"], n=12, sampling=Sampling(temperature=0.9), seed=3)),
}


@pytest.mark.parametrize("case", OLD_CALLS)
def test_charrnn_0_1_generation_calls_still_work_with_a_warning(tmp_path: Path, case: str) -> None:
    """0.1.0 took the length first (`sample(n, prime, ...)`); such a call gives the text of the
    new one and a FutureWarning that says how to write it."""
    lm = charrnn.load(_run(tmp_path / "run", 0))
    with pytest.warns(FutureWarning, match=r"prime comes first and `n` is `length`"):
        text = OLD_CALLS[case](lm)
    assert text == lm.sample("ab", 12, temperature=0.9, seed=3)


def test_the_new_generation_calls_warn_nothing(tmp_path: Path) -> None:
    lm = charrnn.load(_run(tmp_path / "run", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.sample("ab", 5, seed=1)
        "".join(lm.stream("ab", 5, Sampling(), 1))
        list(lm.samples(["ab", "c"], 5, Sampling(), 1))


def test_version_is_one_value_everywhere(tmp_path: Path) -> None:
    """`charrnn --version`, the package and its installed metadata (pyproject reads it) agree,
    and CHANGELOG.md has an entry for it."""
    from importlib.metadata import version

    from conftest import run_cli

    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == f"charrnn, version {charrnn.__version__}"
    assert version("charrnn") == charrnn.__version__
    changelog = (Path(__file__).parent.parent / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {charrnn.__version__} " in changelog
