"""Training engines: what does the arithmetic of one training step (forward, backward, clip,
update) and of validation. The training loop (`charrnn.train`) is the same for every engine;
an engine is built from the model's shape and its `EngineState` (parameters, optimizer moments
and carried state as numpy arrays under charrnn's names, as a checkpoint holds them) and gives
them back the same way, so a run may change engine when it resumes.

- `NumpyEngine` (`train.engine: numpy`, the default): `charrnn.model.CharRNN` and
  `charrnn.optim.Optimizer`.
- `TorchEngine` (`train.engine: torch`, in `charrnn.torch_engine`, which imports torch):
  PyTorch's nn.RNN/LSTM/GRU on a CPU or a GPU, and over processes under `torchrun`.

`make_engine` builds the one a name asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from charrnn.errors import NonFiniteError
from charrnn.evaluate import evaluate
from charrnn.model import CharRNN, ModelShape, Regularisers
from charrnn.optim import Optimizer, OptimizerSettings, clip_by_global_norm

ENGINES = ("numpy", "torch")


@dataclass
class EngineState:
    """An engine's contents as numpy arrays under charrnn's names: what a checkpoint holds.

    params: every parameter; optim_state: `<slot>.<param>` arrays (empty: a fresh optimizer);
    optimizer_t: updates made; carry (L, S, B, H): the state carried to the next chunk (None at
    the start of an epoch); rng: numpy's generator state (the numpy engine's dropout masks);
    torch_rng: the torch engine's generator state (None until it has run).
    """

    params: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray]
    optimizer_t: int
    carry: np.ndarray | None
    rng: dict[str, Any]
    torch_rng: list[int] | None = None


@dataclass(frozen=True)
class StepSettings:
    """What an engine's training step is besides its state: the model's sizes, the regularisers
    it trains with (until `Engine.regularise`), the optimizer and the gradient-norm limit (0: none)."""

    shape: ModelShape
    regularisers: Regularisers
    optimizer: OptimizerSettings
    grad_clip: float


class Engine(Protocol):
    name: str

    def step(self, inputs: np.ndarray, targets: np.ndarray, lr: float) -> Any:
        """One step of truncated BPTT on a chunk: inputs and targets (T, B) ids, the state carried
        from the last chunk. Returns the chunk's mean loss (a float, or a number `float()` takes)."""

    def new_epoch(self) -> None:
        """Start the next chunk from the zero state."""

    def carried_streams(self) -> int | None:
        """B of the carried state, None when there is none."""

    def evaluate(self, ids: np.ndarray, streams: int, seq_len: int) -> float:
        """`charrnn.evaluate.evaluate` of the current weights."""

    def regularise(self, regularisers: Regularisers) -> None:
        """Train on with other regularisers (`model.by_passes`)."""

    def state(self) -> EngineState:
        """The contents, copied to numpy."""


def make_engine(name: str, settings: StepSettings, state: EngineState, device: str = "auto") -> Engine:
    """The engine `name` (one of `ENGINES`) holding `state`; `device` is the torch engine's."""
    if name == "torch":
        from charrnn.torch_engine import TorchEngine  # imports torch: only for this engine

        return TorchEngine(settings, state, device)
    return NumpyEngine(settings, state)


class NumpyEngine:
    """The numpy engine: `CharRNN` and `Optimizer`, updated in place."""

    name = "numpy"

    def __init__(self, settings: StepSettings, state: EngineState) -> None:
        self.model = CharRNN(settings.shape, state.params, settings.regularisers)
        self.optimizer = Optimizer(settings.optimizer, self.model.params)
        if state.optim_state:
            self.optimizer.load_state(state.optim_state, state.optimizer_t)
        self.grad_clip = settings.grad_clip
        self.carry = state.carry
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state.rng
        self.torch_rng = state.torch_rng  # kept for a later switch back to the torch engine

    def step(self, inputs: np.ndarray, targets: np.ndarray, lr: float) -> float:
        model = self.model
        if self.carry is None:
            self.carry = model.initial_state(inputs.shape[1])
        loss, carry = model.loss(inputs, targets, self.carry, self.rng if model.regularisers.stochastic else None)
        if not math.isfinite(loss):
            raise NonFiniteError(f"loss is not finite ({loss})")
        grads = model.backward()
        clip_by_global_norm(grads, self.grad_clip)
        self.optimizer.step(model.params, grads, lr)
        self.carry = carry
        return loss

    def new_epoch(self) -> None:
        self.carry = None

    def carried_streams(self) -> int | None:
        return None if self.carry is None else self.carry.shape[2]

    def evaluate(self, ids: np.ndarray, streams: int, seq_len: int) -> float:
        return evaluate(self.model, ids, streams=streams, seq_len=seq_len).loss

    def regularise(self, regularisers: Regularisers) -> None:
        self.model.regularise(regularisers)

    def state(self) -> EngineState:
        return EngineState(
            self.model.params,
            self.optimizer.state,
            self.optimizer.t,
            self.carry,
            self.rng.bit_generator.state,
            self.torch_rng,
        )
