"""The server's decoding loop (`charrnn.scheduler`) without HTTP: its jobs against
`charrnn.sample`'s loop (the other place that decodes), stops held back and left out, cancelled
and empty jobs, and the echoed prompt's log-probabilities against `score`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Recorder, run_jobs

import charrnn
from charrnn import scheduler
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
    assert cancelled.text == "" and cancelled.emit.reason == "cancelled"


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


def test_a_long_prompt_is_fed_between_the_other_streams_steps(lm: charrnn.LanguageModel) -> None:
    """A 20,000-character prompt is fed a piece at a time: a short job submitted after it is
    done before the long one draws its first character."""
    timeline: list = []
    long = job(lm, "ab c\n" * 4000, 5, 0, streaming=True)
    long.emit = Recorder("long", timeline)
    short = job(lm, "a", 20, 1)
    short.emit = Recorder("short", timeline)
    run_jobs([long, short])
    assert len(short.text) == 20 and len(long.text) == 5
    short_done = timeline.index(("short", ("done", "length")))
    long_first = next(i for i, (name, event) in enumerate(timeline) if name == "long" and event[0] == "text")
    assert short_done < long_first


def test_the_choices_of_one_prompt_are_fed_once(lm: charrnn.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[int] = []
    original = scheduler._Priming.feed
    monkeypatch.setattr(scheduler._Priming, "feed", lambda self, *a, **k: fed.append(n := original(self, *a, **k)) or n)
    prompt = "ab c\n" * 200
    jobs = [job(lm, prompt, 3, i) for i in range(16)]
    run_jobs(jobs)
    assert sum(fed) == len(prompt) + 1  # the start id and the prompt, once for all 16 choices
    assert [j.text for j in jobs] == list(lm.samples([prompt] * 16, 3, Sampling(), seed=5))


def test_streams_in_flight_are_bounded_and_every_ending_frees_its_place(lm: charrnn.LanguageModel) -> None:
    sched = scheduler.Scheduler(max_streams=8)
    first = [job(lm, "a", 30, i) for i in range(6)]
    assert sched.submit(first) and sched.in_flight == 6
    assert not sched.submit([job(lm, "b", 5, i) for i in range(3)])  # 9 > 8: refused whole
    assert sched.in_flight == 6
    first[0].cancelled.set()
    sched.start()
    try:
        for j in first:
            assert j.emit.done.wait(60)
        assert sched.in_flight == 0 and first[0].emit.reason == "cancelled"
        again = [job(lm, "b", 5, i) for i in range(8)]
        assert sched.submit(again)
        for j in again:
            assert j.emit.done.wait(60)
        assert sched.in_flight == 0
    finally:
        sched.stop()
        sched.join(10)


def test_echo_with_no_tokens_gives_the_prompt_s_logprobs(lm: charrnn.LanguageModel) -> None:
    """`echo: true, logprobs: 1, max_tokens: 0` is how OpenAI clients score a text."""
    prompt = "ab c\nbca"
    j = job(lm, prompt, 0, 0, logprobs=1, echo=True)
    run_jobs([j])
    assert j.text == "" and j.emit.reason == "length"
    assert [info["token"] for info in j.infos] == list(prompt) and all(len(i["top"]) == 1 for i in j.infos)
    assert sum(info["logprob"] for info in j.infos) == pytest.approx(-lm.score(prompt) * len(prompt), rel=1e-5)
