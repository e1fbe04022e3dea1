"""A trained model as a Python object: `charrnn.load(path)`; the CLI's sample, score and eval call it.

import charrnn
lm = charrnn.load("runs/shakespeare")          # a run directory or a .npz
lm.sample("ROMEO:", 200, temperature=0.8, seed=1)
lm.score("To be, or not to be")                  # nats per character
lm.next_char_probs("ROMEO")                      # {"\\n": 0.01, ":": 0.93, ...}
lm.evaluate_dynamic(open("heldout.txt").read())  # static and dynamic loss (charrnn.dynamic)
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from charrnn import checkpoint
from charrnn.config import Config
from charrnn.data import UNITS, LongText, Source, iter_text, pieces
from charrnn.dynamic import DynamicResult, DynamicSettings, evaluate_dynamic, gradient_rms
from charrnn.errors import ArgumentTypeError, ArgumentValueError, check_int, check_str
from charrnn.evaluate import EvalResult, evaluate_blocks
from charrnn.model import CharRNN, ModelShape, Regularisers
from charrnn.rundir import find_model
from charrnn.sample import Sampling, generate, starts, stream
from charrnn.score import RecordScore, score_records, score_sources
from charrnn.vocab import Vocab

Method = TypeVar("Method", bound=Callable[..., Any])

# charrnn 0.1.0's generation calls, before prime came first and `n` became `length` (see
# CHANGELOG.md): accepted with a FutureWarning until 0.3.0.
_OLD_ORDER = {
    "sample": ("n", "prime", "temperature", "top_k", "top_p", "stop", "seed", "greedy"),
    "stream": ("n", "prime", "sampling", "seed", "stop"),
    "samples": ("primes", "n", "sampling", "seed", "stop"),
}


def _accepts_old_order(method: Method) -> Method:
    """Let `method` also take 0.1.0's call: `n=` for the length, or (sample, stream) the length
    first, as a positional int; the call is translated, with a FutureWarning naming the new one."""
    name, order = method.__name__, _OLD_ORDER[method.__name__]

    @functools.wraps(method)
    def call(self: LanguageModel, *args: Any, **kwargs: Any) -> Any:
        length_first = order[0] == "n" and args and isinstance(args[0], int) and not isinstance(args[0], bool)
        if "n" not in kwargs and not length_first:
            return method(self, *args, **kwargs)
        if len(args) > len(order):
            raise ArgumentTypeError(f"{name}() takes at most {len(order)} arguments in charrnn 0.1.0's order")
        named = dict(zip(order, args, strict=False))
        if set(named) & set(kwargs):
            raise ArgumentTypeError(f"{name}() got {sorted(set(named) & set(kwargs))} twice")
        kwargs = {**named, **kwargs}
        kwargs["length"] = kwargs.pop("n")
        new = {"sample": "sample(prime, length, ...)", "stream": "stream(prime, length, ...)"}
        warnings.warn(
            f"{name}() called as in charrnn 0.1.0; write {new.get(name, 'samples(primes, length, ...)')}: the prime "
            "comes first and `n` is `length` (the old call stops working in 0.3.0)",
            FutureWarning,
            stacklevel=2,
        )
        return method(self, **kwargs)

    return call  # type: ignore[return-value]


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
        self.regularisers: Regularisers = ckpt.regularisers  # as it trained (inference uses none)
        self.step: int = ckpt.progress.step
        self.model: CharRNN = ckpt.model()
        self._gradient_rms = gradient_rms(ckpt.optim_state, ckpt.meta)  # for dynamic evaluation

    def twin(self) -> LanguageModel:
        """The same model (the same weights, only read) with working buffers of its own, for
        another thread to use while this one runs."""
        twin = copy.copy(self)
        twin.model = CharRNN(self.shape, self.model.params)
        return twin

    def __repr__(self) -> str:
        s = self.shape
        model = f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}"
        return f"<LanguageModel {model}, step {self.step}: {self.path}>"

    @_accepts_old_order
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

    @_accepts_old_order
    def stream(
        self,
        prime: str = "",
        length: int = 200,
        sampling: Sampling = Sampling(),
        seed: int | None = None,
        stop: str | None = None,
    ) -> Iterator[str]:
        """`sample`, one character at a time as it is generated."""
        _check_generation([prime], length, sampling, seed, stop)
        return stream(self.model, self.vocab, prime, length, sampling, seed, stop)

    @_accepts_old_order
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
        if isinstance(primes, str) or not isinstance(primes, Sequence):
            raise ArgumentTypeError(f"primes must be a list of str, got {type(primes).__name__}; sample() takes one")
        _check_generation(primes, length, sampling, seed, stop)
        return generate(self.model, self.vocab, primes, length, sampling, seed, stop)

    def score(self, text: str) -> float:
        """Nats per character of `text` as one record (see `charrnn.score`)."""
        return self.score_records([check_str(text, "text")])[0]

    def score_records(self, records: Iterable[str]) -> list[float]:
        """Nats per character of each record, scored independently: inf for a record with
        characters outside the vocabulary, nan for an empty one."""
        return [s.loss for s in self.iter_scores(records)]

    def iter_scores(self, records: Iterable[str]) -> Iterator[RecordScore]:
        """`RecordScore`s of records as they come (a generator: flat memory on any input). A
        record that is not a str fails when it is reached."""
        if isinstance(records, str | bytes) or not isinstance(records, Iterable):
            raise ArgumentTypeError(
                f"records must be an iterable of str, got {type(records).__name__}; score() takes one"
            )
        checked = (check_str(record, f"record {i}") for i, record in enumerate(records))
        return score_records(self.model, self.vocab, checked)

    def score_sources(self, sources: Sequence[Source], by: str = "line") -> Iterator[RecordScore]:
        """The records of files or standard input (`charrnn.data.sources_from_args`), by line,
        paragraph or file."""
        if by not in UNITS:
            raise ArgumentValueError(f"by must be one of {', '.join(UNITS)}, got {by!r:.40}")
        return score_sources(self.model, self.vocab, sources, by)

    def next_char_probs(self, prefix: str = "") -> dict[str, float]:
        """The probability of each character following `prefix`, most likely first."""
        (context,), state0 = starts(self.model, self.vocab, [check_str(prefix, "prefix")])
        logits, _ = self.model.logits(context[:, None], state0)
        scores = logits[:, -1, 0].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        return {self.vocab.chars[i]: float(probs[i]) for i in order}

    def evaluate(self, text: str, seq_len: int = 256) -> EvalResult:
        """`charrnn eval`: the text as one sequence from the zero state, every character after
        the first predicted (unlike `score`, which starts after a newline and predicts all)."""
        blocks = map(self.vocab.encode, pieces(check_str(text, "text")))
        return evaluate_blocks(self.model, blocks, check_int(seq_len, "seq_len", 1))

    def evaluate_sources(self, sources: Sequence[Source], seq_len: int = 256) -> EvalResult:
        """`evaluate` of the concatenated files or standard input, read block by block: memory
        stays flat however long the text is."""
        blocks = (self.vocab.encode(block) for source in sources for block in iter_text(source))
        return evaluate_blocks(self.model, blocks, check_int(seq_len, "seq_len", 1))

    def evaluate_dynamic(self, text: str, settings: DynamicSettings | None = None) -> DynamicResult:
        """`charrnn eval --dynamic`: the loss of `text` read as in `evaluate`, by the trained
        weights (static) and by a copy that takes a gradient step after each segment it has
        scored (dynamic; see `charrnn.dynamic`). The model's weights are not changed."""
        blocks = map(self.vocab.encode, pieces(check_str(text, "text")))
        return self._dynamic(blocks, settings)

    def evaluate_dynamic_sources(
        self, sources: Sequence[Source], settings: DynamicSettings | None = None
    ) -> DynamicResult:
        """`evaluate_dynamic` of the concatenated files or standard input, read block by block."""
        blocks = (self.vocab.encode(block) for source in sources for block in iter_text(source))
        return self._dynamic(blocks, settings)

    def _dynamic(self, blocks: Iterable[np.ndarray], settings: DynamicSettings | None) -> DynamicResult:
        if settings is not None and not isinstance(settings, DynamicSettings):
            raise ArgumentTypeError(f"settings must be a DynamicSettings, got {type(settings).__name__}")
        settings = settings or DynamicSettings()
        return evaluate_dynamic(self.shape, self.model.params, blocks, settings, self._gradient_rms)


def _check_generation(primes: Sequence[object], length: object, sampling: object, seed: object, stop: object) -> None:
    """The checks of the CLI's sample options, for Python callers (charrnn's TypeError and
    ValueError kinds): primes are str (or a `LongText` read from a file), length an int >= 0,
    sampling a `Sampling`, seed None or an int >= 0, stop None or a str."""
    for i, prime in enumerate(primes):
        if not isinstance(prime, str | LongText):
            raise ArgumentTypeError(f"prime {i} must be a str, got {type(prime).__name__} {prime!r:.40}")
    check_int(length, "length", 0)
    if not isinstance(sampling, Sampling):
        raise ArgumentTypeError(f"sampling must be a charrnn.Sampling, got {type(sampling).__name__}")
    if seed is not None:
        check_int(seed, "seed", 0)
    if stop is not None:
        check_str(stop, "stop")


def load(path: str | Path | None = None) -> LanguageModel:
    """A model from a run directory (its best.npz, else latest.npz: see `charrnn.rundir`), an
    .npz checkpoint, or, with None, the most recently trained run under ./runs."""
    found = find_model(path)
    return LanguageModel(checkpoint.load(found), found)
