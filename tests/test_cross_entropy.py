"""A text's summed cross-entropy is computed in several places, each for its own job (training's
loss, `eval`, `score`'s batched and long records, `eval --dynamic`'s static pass, `viz`'s
surprise, the server's log-probabilities, the torch engine's validation): on one model and one
text they all give the same number."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Recorder, run_jobs

import charrnn
from charrnn.config import build_config
from charrnn.dynamic import DynamicSettings
from charrnn.engine import EngineState, StepSettings, make_engine
from charrnn.model import init_params
from charrnn.optim import OptimizerSettings
from charrnn.rundir import create_run
from charrnn.sample import Sampling, seed_key
from charrnn.scheduler import Job
from charrnn.score import long_nll, sequence_nll
from charrnn.viz import trace
from charrnn.vocab import Vocab

TEXT = "the cat sat on the mat\nand the dog ran to the cat\n" * 3


@pytest.fixture(scope="module", params=["rnn", "lstm", "gru"])
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> charrnn.LanguageModel:
    config = build_config([{"model": {"cell": request.param, "hidden_size": 12, "num_layers": 2}}])
    vocab = Vocab.from_chars(TEXT)
    params = init_params(config.model.shape(len(vocab)), np.random.default_rng(1), np.dtype(np.float32))
    path = tmp_path_factory.mktemp("xent") / request.param
    create_run(path, config, vocab, params)
    return charrnn.load(path)


def _served(lm: charrnn.LanguageModel) -> float:
    """The prompt's log-probabilities as the server's scheduler gives them (echo, logprobs)."""
    job = Job(lm, TEXT, 1, Sampling(), seed_key(0), 0, Recorder(), logprobs=0, echo=True)
    run_jobs([job])
    return -sum(info["logprob"] for info in job.infos[: len(TEXT)])


def _torch_validation(lm: charrnn.LanguageModel, ids: np.ndarray) -> float:
    pytest.importorskip("torch")
    state = EngineState(lm.model.params, {}, 0, None, np.random.default_rng(0).bit_generator.state)
    engine = make_engine("torch", StepSettings(lm.shape, lm.regularisers, OptimizerSettings(), 0.0), state, "cpu")
    return engine.evaluate(ids, 1, 16) * (len(ids) - 1)


def test_every_place_that_sums_cross_entropy_agrees(lm: charrnn.LanguageModel) -> None:
    n, model, vocab = len(TEXT), lm.model, lm.vocab
    ids = np.concatenate([[vocab.start_id], vocab.encode(TEXT)]).astype(np.int64)  # the start state, then TEXT
    training, _ = model.loss(ids[:-1, None], ids[1:, None], model.initial_state(1))
    totals = {
        "training loss (model.loss)": training * n,
        "eval (evaluate.sum_xent)": lm.evaluate("\n" + TEXT, seq_len=16).loss * n,
        "score (score.sequence_nll)": float(sequence_nll(model, vocab.start_id, [vocab.encode(TEXT)])[0]),
        "a long record (score.long_nll)": long_nll(model, vocab, TEXT)[0],
        "eval --dynamic, static (dynamic.evaluate_dynamic)": lm.evaluate_dynamic(
            "\n" + TEXT, DynamicSettings("sgd", lr=0.0, segment=7)
        ).static.loss
        * n,
        "viz surprise (viz.trace)": float(trace(lm, TEXT).loss.sum()),
        "server logprobs (scheduler.Logprobs)": _served(lm),
        "torch validation (TorchEngine.evaluate)": _torch_validation(lm, ids),
    }
    reference = totals["eval (evaluate.sum_xent)"]
    assert reference > n * 0.5  # an untrained model: far from zero, so agreement means something
    off = {name: total for name, total in totals.items() if total != pytest.approx(reference, rel=2e-5)}
    assert not off, f"eval gives {reference}; these differ: {off}"
