"""Generation (`charrnn.sample`): sampling options (temperature, top-k, top-p, stop), seeding,
batched priming and parallel streams handed out batch by batch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, make_model, run_cli

import charrnn
from charrnn import data
from charrnn import sample as sample_module
from charrnn.errors import InvalidUsageError
from charrnn.sample import Sampling, generate, next_ids, uniforms
from charrnn.vocab import Vocab

CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}  # chi-square critical values, p = 0.001


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_top_p_never_draws_outside_the_nucleus_and_renormalises_inside_it() -> None:
    probs = np.array([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])
    n = 60_000
    logits = np.tile(np.log(probs), (n, 1))
    picks = next_ids(logits, np.random.default_rng(0).random(n), Sampling(top_p=0.75))
    # sorted: 0.4 (1), 0.25 (3), 0.15 (4) reach 0.8 >= 0.75; 0.1 (2) and the rest are outside
    nucleus = [1, 3, 4]
    counts = np.bincount(picks, minlength=6)
    assert set(np.flatnonzero(counts)) == set(nucleus)
    inside = probs[nucleus] / probs[nucleus].sum()
    assert _chi2(counts[nucleus], inside) < CHI2_999[len(nucleus) - 1]


def test_temperature_then_top_k_then_top_p() -> None:
    """T = 0.5 squares the probabilities (then renormalised); top-k 3 keeps ids 1, 3, 4; top-p 0.8
    over those three keeps 1 and 3 (0.64/0.9 + 0.25/0.9 >= 0.8). In another order, another set."""
    probs = np.array([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])
    n = 40_000
    logits = np.tile(np.log(probs), (n, 1))
    sampling = Sampling(temperature=0.5, top_k=3, top_p=0.8)
    counts = np.bincount(next_ids(logits, np.random.default_rng(1).random(n), sampling), minlength=6)
    kept = np.array([1, 3])
    assert set(np.flatnonzero(counts)) == set(kept)
    squared = probs[kept] ** 2
    assert _chi2(counts[kept], squared / squared.sum()) < CHI2_999[1]


def test_top_p_one_keeps_everything_and_tiny_top_p_is_greedy() -> None:
    logits = np.tile(np.log([0.3, 0.3, 0.4]), (3000, 1))
    u = np.random.default_rng(2).random(3000)
    assert set(next_ids(logits, u, Sampling(top_p=1.0)).tolist()) == {0, 1, 2}
    assert set(next_ids(logits, u, Sampling(top_p=1e-9)).tolist()) == {2}


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"top_p": 1.5}, {"temperature": 0.0}, {"top_k": -1}])
def test_sampling_options_are_validated(bad: dict) -> None:
    with pytest.raises(InvalidUsageError):
        Sampling(**bad)


def test_counter_based_draws_are_uniform_and_depend_only_on_stream_and_counter() -> None:
    streams, counters = np.repeat(np.arange(200), 500), np.tile(np.arange(500), 200)
    u = uniforms(7, streams, counters)
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 10).astype(int), minlength=10)
    assert _chi2(counts, np.full(10, 0.1)) < 27.88  # df 9, p = 0.001
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    np.testing.assert_array_equal(uniforms(7, streams[::-1], counters[::-1]), u[::-1])
    assert not np.array_equal(uniforms(8, streams, counters), u)


def test_a_prime_gets_the_same_completion_in_any_batch() -> None:
    """--seed reproduces, batched or not: a stream's text depends on its prime, index and seed."""
    vocab = Vocab.from_chars("abcdefg\n")
    model = make_model("gru", V=len(vocab), scale=1.0)
    primes = ["", "a", "abcdefgabc", "bb", "gfedcba", "c", "", "ddd"]  # different lengths
    together = list(generate(model, vocab, primes, 25, seed=3))
    for batch in (1, 3):
        assert list(generate(model, vocab, primes, 25, seed=3, batch_streams=batch)) == together
    assert list(generate(model, vocab, primes[:1], 25, seed=3)) == together[:1]
    assert len(set(together)) > 4


def test_stop_ends_each_sample_on_its_own_and_length_stays_the_bound() -> None:
    vocab = Vocab.from_chars("ab\n")
    model = make_model("rnn", V=len(vocab), scale=0.5)
    texts = list(generate(model, vocab, [""] * 50, 40, seed=0, stop="ab"))
    assert all(len(t) <= 40 for t in texts)
    stopped = [t for t in texts if t.endswith("ab")]
    assert len(stopped) > 25 and len({len(t) for t in stopped}) > 3
    for t in stopped:
        assert "ab" not in t[:-1]  # ended at the first occurrence
    for t in texts:
        if not t.endswith("ab"):
            assert len(t) == 40 and "ab" not in t
    with pytest.raises(InvalidUsageError, match="never generates"):
        list(generate(model, vocab, [""], 5, stop="z"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("names")
    names = ["alice", "albert", "bob", "bonnie", "carol", "carl", "dave", "dora"] * 60
    (folder / "names.txt").write_text("\n".join(names) + "\n")
    proc = run_cli("train", "names.txt", "-o", "run", *TINY, "--steps", "60", "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder / "run"


def test_prime_file_completes_each_line_in_order(run_dir) -> None:
    primes = "al\nbo\nc\n\nda\n"
    proc = run_cli("sample", "-m", str(run_dir), "--prime-file", "-", "--stop", "\n", "--seed", "1", "-n", "20",
                   cwd=run_dir, input=primes.encode())  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 5
    for prime, line in zip(primes.split("\n"), lines, strict=False):
        assert line.startswith(prime)
    again = run_cli("sample", "-m", str(run_dir), "--prime-file", "-", "--stop", "\n", "--seed", "1", "-n", "20",
                    cwd=run_dir, input=primes.encode())  # fmt: skip
    assert again.stdout == proc.stdout


def test_cli_stop_gives_one_line_and_each_of_num_samples_stops_on_its_own(run_dir) -> None:
    lm = charrnn.load(run_dir)
    one = run_cli("sample", "-m", str(run_dir), "--stop", "\n", "-p", "ca", "--seed", "2", "-n", "100", cwd=run_dir)
    expected = lm.sample("ca", 100, stop="\n", seed=2)
    assert one.stdout.decode() == "ca" + expected
    assert expected.count("\n") == 1 and expected.endswith("\n")
    many = run_cli("sample", "-m", str(run_dir), "--stop", "\n", "--num-samples", "4", "--seed", "2", cwd=run_dir)
    texts = list(lm.samples([""] * 4, 200, seed=2, stop="\n"))
    assert many.stdout.decode() == "\n\n".join(texts)
    assert texts[0] == lm.sample("", 200, seed=2, stop="\n")
    assert all(t.endswith("\n") and t.count("\n") == 1 for t in texts)


def test_prime_file_refuses_prime_and_num_samples(run_dir) -> None:
    proc = run_cli("sample", "-m", str(run_dir), "--prime-file", "-", "-p", "x", cwd=run_dir, input=b"a\n")
    assert proc.returncode == 2 and b"--prime-file" in proc.stderr


def _texts(model, vocab, primes, seed, length=30, **kw) -> list[str]:
    return list(generate(model, vocab, primes, length, Sampling(**kw), seed=seed))


def test_same_seed_same_text_and_different_seed_different_text() -> None:
    model, vocab = make_model("lstm", V=7, scale=1.0), Vocab.from_chars("abcdefg")
    assert _texts(model, vocab, [""], 1, 50) == _texts(model, vocab, [""], 1, 50)
    assert _texts(model, vocab, [""], 1, 50) != _texts(model, vocab, [""], 2, 50)
    assert _texts(model, vocab, [""], 1, 50, greedy=True) == _texts(model, vocab, [""], 2, 50, greedy=True)


def test_top_k_only_draws_from_the_k_most_likely() -> None:
    logits = np.array([[0.0, 5.0, 1.0, 4.0, -1.0]] * 2000)
    picks = next_ids(logits, np.random.default_rng(0).random(2000), Sampling(top_k=2))
    assert set(picks.tolist()) == {1, 3}


def test_low_temperature_approaches_greedy_and_sampling_follows_softmax() -> None:
    logits = np.log(np.array([[0.2, 0.5, 0.3]] * 20000))
    picks = next_ids(logits, np.random.default_rng(0).random(20000))
    np.testing.assert_allclose(np.bincount(picks, minlength=3) / 20000, [0.2, 0.5, 0.3], atol=0.015)
    cold = next_ids(logits[:100], np.random.default_rng(0).random(100), Sampling(temperature=0.01))
    assert (cold == 1).all()


def test_num_samples_streams_are_independent_and_match_single_runs_when_greedy() -> None:
    model, vocab = make_model("rnn", V=7, scale=1.0), Vocab.from_chars("abcdefg")
    batch = _texts(model, vocab, ["ab"] * 4, 0)
    assert len(batch) == 4 and all(len(text) == 30 for text in batch)
    assert len(set(batch)) > 1
    greedy = _texts(model, vocab, ["ab"] * 3, 0, greedy=True)
    assert greedy == _texts(model, vocab, ["ab"], 5, greedy=True) * 3


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


def test_a_long_prime_is_fed_alone_in_pieces_and_continues_as_if_fed_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = Vocab.from_chars("abcdefg\n")
    model = make_model("lstm", V=len(vocab), scale=1.0)
    rng = np.random.default_rng(3)
    primes = ["".join(rng.choice(list("abcdefg"), n)) for n in (300, 5, 120)]
    whole = list(generate(model, vocab, primes, 40, Sampling(greedy=True), seed=1))
    monkeypatch.setattr(sample_module, "LONG_PRIME", 100)
    monkeypatch.setattr(sample_module, "PRIME_CHUNK_STEPS", 16)
    monkeypatch.setattr(data, "BLOCK_CHARS", 37)
    assert list(generate(model, vocab, primes, 40, Sampling(greedy=True), seed=1)) == whole
    state, last = sample_module.prime_state(model, vocab, primes[0])
    logits, _ = model.logits(last[:, None], state)
    expected, _ = model.logits(np.array([[vocab.start_id, *vocab.encode(primes[0])]]).T, model.initial_state(1))
    np.testing.assert_allclose(logits[:, -1], expected[:, -1], rtol=1e-12)


def test_an_empty_stop_text_is_refused(run_dir: Path) -> None:
    assert_clean_error(run_cli("sample", "-m", str(run_dir), "--stop", "", cwd=run_dir.parent), 2, "stop text is empty")
    with pytest.raises(InvalidUsageError, match="stop text is empty"):
        charrnn.load(run_dir).sample("", 10, stop="")


def test_a_temperature_so_low_that_the_logits_overflow_samples_greedily() -> None:
    """logits / 1e-320 overflow to inf (and inf - inf is NaN): such rows take the most likely id,
    the others draw as usual."""
    logits = np.array([[1.0, 3.0, 2.0], [0.5, 0.1, 0.2]], np.float32)
    u = np.array([0.3, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert next_ids(logits, u, Sampling(temperature=1e-320)).tolist() == [1, 0]
        assert next_ids(logits, u, Sampling(temperature=1e-300)).tolist() == [1, 0]
    mixed = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]], np.float32)  # the second row does not overflow
    assert next_ids(mixed, u, Sampling(temperature=1e-320)).tolist() == [1, next_ids(mixed[1:], u[1:])[0]]
