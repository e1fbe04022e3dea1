"""A trained model as a Python object: `charrnn.load(path)`; the CLI's sample, score and eval call it.

import charrnn
lm = charrnn.load("runs/shakespeare")          # a run directory or a .npz
lm.sample("ROMEO:", 200, temperature=0.8, seed=1)
lm.score("To be, or not to be")                  # nats per character
lm.next_char_probs("ROMEO")                      # {"\\n": 0.01, ":": 0.93, ...}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from charrnn import checkpoint
from charrnn.config import Config
from charrnn.data import Source
from charrnn.evaluate import EvalResult, evaluate
from charrnn.model import CharRNN, ModelShape
from charrnn.rundir import find_model
from charrnn.sample import Sampling, contexts_for, generate, stream
from charrnn.score import RecordScore, score_records, score_sources
from charrnn.vocab import Vocab


class LanguageModel:
    """A loaded checkpoint: generation, scoring and next-character probabilities.

    Every method starts from the model's start state (the zero state fed a newline), so
    `sample(prime=p)` continues p as if p began a line, and `score(r)` predicts every character
    of r. Methods do not change the weights; one object may serve many calls. Generation takes
    its arguments in one order everywhere: prime(s), length, sampling, seed, stop.
    """

    def __init__(self, ckpt: checkpoint.Checkpoint, path: Path) -> None:
        self.path = path
        self.vocab: Vocab = ckpt.vocab
        self.config: Config = ckpt.config
        self.shape: ModelShape = ckpt.shape
        self.step: int = ckpt.meta["step"]
        self.model: CharRNN = ckpt.model()

    def __repr__(self) -> str:
        s = self.shape
        model = f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}"
        return f"<LanguageModel {model}, step {self.step}: {self.path}>"

    def sample(
        self,
        prime: str = "",
        length: int = 200,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        stop: str | None = None,
    ) -> str:
        """Up to `length` characters generated after `prime` (the prime not included); ends after
        `stop` if it generates it. The same seed and options give the same text."""
        sampling = Sampling(temperature, top_k, top_p, greedy)
        return "".join(self.stream(prime, length, sampling, seed, stop))

    def stream(
        self,
        prime: str = "",
        length: int = 200,
        sampling: Sampling = Sampling(),
        seed: int | None = None,
        stop: str | None = None,
    ) -> Iterator[str]:
        """`sample`, one character at a time as it is generated."""
        return stream(self.model, self.vocab, prime, length, sampling, seed, stop)

    def samples(
        self,
        primes: Sequence[str],
        length: int = 200,
        sampling: Sampling = Sampling(),
        seed: int | None = None,
        stop: str | None = None,
    ) -> Iterator[str]:
        """One completion per prime, in order, generated together in batches as parallel streams.
        Completion i equals `sample(primes[i])` with stream index i (see `charrnn.sample`)."""
        return generate(self.model, self.vocab, primes, length, sampling, seed, stop)

    def score(self, text: str) -> float:
        """Nats per character of `text` as one record (see `charrnn.score`)."""
        return self.score_records([text])[0]

    def score_records(self, records: Iterable[str]) -> list[float]:
        """Nats per character of each record, scored independently: inf for a record with
        characters outside the vocabulary, nan for an empty one."""
        return [s.loss for s in self.iter_scores(records)]

    def iter_scores(self, records: Iterable[str]) -> Iterator[RecordScore]:
        """`RecordScore`s of records as they come (a generator: flat memory on any input)."""
        return score_records(self.model, self.vocab, records)

    def score_sources(self, sources: Sequence[Source], by: str = "line") -> Iterator[RecordScore]:
        """The records of files or standard input (`charrnn.data.sources_from_args`), by line,
        paragraph or file."""
        return score_sources(self.model, self.vocab, sources, by)

    def next_char_probs(self, prefix: str = "") -> dict[str, float]:
        """The probability of each character following `prefix`, most likely first."""
        context = contexts_for(self.vocab, [prefix])[0]
        logits, _ = self.model.logits(context[:, None], self.model.initial_state(1))
        scores = logits[:, -1, 0].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        return {self.vocab.chars[i]: float(probs[i]) for i in order}

    def evaluate(self, text: str, seq_len: int = 256) -> EvalResult:
        """`charrnn eval`: the text as one sequence from the zero state, every character after
        the first predicted (unlike `score`, which starts after a newline and predicts all)."""
        return evaluate(self.model, self.vocab.encode(text), streams=1, seq_len=seq_len)


def load(path: str | Path | None = None) -> LanguageModel:
    """A model from a run directory (its best.npz, else latest.npz: see `charrnn.rundir`), an
    .npz checkpoint, or, with None, the most recently trained run under ./runs."""
    found = find_model(path)
    return LanguageModel(checkpoint.load(found), found)
