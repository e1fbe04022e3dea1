"""The server's decoding loop (`charrnn.scheduler`) without HTTP: its jobs against
`charrnn.sample`'s loop (the other place that decodes), stops held back and left out, cancelled
and empty jobs, and the echoed prompt's log-probabilities against `score`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Recorder, run_jobs

import charrnn
from charrnn.config import build_config
from charrnn.model import init_params
from charrnn.rundir import create_run
from charrnn.sample import Sampling, seed_key
from charrnn.scheduler import Job
from charrnn.vocab import Vocab

VOCAB = Vocab.from_chars("ab c\n")


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> charrnn.LanguageModel:
    """An untrained GRU 2x16 with large weights: varied text, and each character often drawn."""
    config = build_config([{"model": {"cell": "gru", "hidden_size": 16, "num_layers": 2}}])
    params = {
        k: 2 * v
        for k, v in init_params(config.model.shape(len(VOCAB)), np.random.default_rng(3), np.dtype(np.float32)).items()
    }
    path = tmp_path_factory.mktemp("sched") / "run"
    create_run(path, config, VOCAB, params)
    return charrnn.load(path)


def job(lm: charrnn.LanguageModel, prime: str, length: int, stream: int, seed: int = 5, **options: object) -> Job:
    sampling = options.pop("sampling", Sampling())
    return Job(lm, prime, length, sampling, seed_key(seed), stream, Recorder(), **options)


@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling(temperature=0.7, top_k=3), Sampling(top_p=0.8), Sampling(greedy=True)]
)
def test_jobs_decode_what_sample_decodes(lm: charrnn.LanguageModel, sampling: Sampling) -> None:
    """The two decoding loops agree: a job's text is `samples`' text of the same seed, stream
    index, prime and options, with primes of different lengths run side by side."""
    primes = ["", "a", "ab c", "c\nb", "bbbbbbbbbbbbbbbb"]
    jobs = [job(lm, prime, 40, i, sampling=sampling) for i, prime in enumerate(primes)]
    run_jobs(jobs)
    assert [j.text for j in jobs] == list(lm.samples(primes, 40, sampling, seed=5))
    assert all(j.emit.reason == "length" for j in jobs)


def test_a_stop_ends_a_job_where_sample_stops_and_is_left_out(lm: charrnn.LanguageModel) -> None:
    """`sample --stop S` prints up to and including S; the job ends at the same character and
    leaves S out (OpenAI's convention). Where S is never drawn, both give `length` characters."""
    primes = [""] * 12
    for stop in ["\n", "a ", "bcb"]:
        jobs = [job(lm, prime, 30, i, stops=(stop,)) for i, prime in enumerate(primes)]
        run_jobs(jobs)
        for j, text in zip(jobs, lm.samples(primes, 30, Sampling(), seed=5, stop=stop), strict=True):
            if j.emit.reason == "stop":
                assert text == j.text + stop
            else:
                assert text == j.text and len(text) == 30 and stop not in text
        assert any(j.emit.reason == "stop" for j in jobs)


def test_streamed_pieces_hold_back_what_may_begin_a_stop(lm: charrnn.LanguageModel) -> None:
    """Streamed, a job's pieces add up to its text, and no piece ever shows part of a stop."""
    jobs = [job(lm, "", 60, i, stops=("ab", "c\n"), streaming=True) for i in range(16)]
    run_jobs(jobs)
    for j in jobs:
        assert j.emit.streamed == j.text
        assert "ab" not in j.text and "c\n" not in j.text
    assert {j.emit.reason for j in jobs} <= {"stop", "length"}


def test_empty_and_cancelled_jobs_end_without_text(lm: charrnn.LanguageModel) -> None:
    empty, cancelled = job(lm, "a", 0, 0), job(lm, "a", 50, 1)
    cancelled.cancelled.set()
    run_jobs([empty, cancelled])
    assert (empty.text, empty.emit.reason) == ("", "length")
    assert cancelled.text == "" and cancelled.emit.reason == "length"


def test_a_job_that_fails_ends_as_an_error_and_the_others_go_on(lm: charrnn.LanguageModel) -> None:
    bad, good = job(lm, "zz", 10, 0), job(lm, "a", 10, 1)  # z is not in the vocabulary
    run_jobs([bad, good])
    assert bad.emit.reason == "error" and bad.text == ""
    assert good.emit.reason == "length" and len(good.text) == 10


def test_echoed_logprobs_of_the_prompt_sum_to_its_score(lm: charrnn.LanguageModel) -> None:
    """The server's per-character log-probabilities (one of the places a text's cross-entropy is
    computed) against `score`'s: the prompt's sum is minus its score times its length."""
    prompt = "ab c\nbca cab\n"
    j = job(lm, prompt, 3, 0, logprobs=2, echo=True)
    run_jobs([j])
    prompt_infos = j.infos[: len(prompt)]
    assert [info["token"] for info in prompt_infos] == list(prompt)
    total = sum(info["logprob"] for info in prompt_infos)
    assert total == pytest.approx(-lm.score(prompt) * len(prompt), rel=1e-5)
    for info in j.infos:  # the top alternatives are the most likely, and the chosen one is among all
        assert len(info["top"]) == 2 and max(info["top"].values()) >= info["logprob"] - 1e-12
        assert sum(math.exp(v) for v in info["top"].values()) <= 1 + 1e-9
