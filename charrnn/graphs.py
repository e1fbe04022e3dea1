"""The lecture's four computational graphs: one cell, its weights shared over time, unrolled
four ways. Each graph is built from `RecurrentStack` (embedding + stacked cells) plus the
`linear` read-out and softmax cross-entropy; no graph has cell math of its own.

    many-to-many     x_1 .. x_T  ->  y_1 .. y_T      loss on every step (charrnn's language model)
    many-to-one      x_1 .. x_T  ->  y_T             loss on the last step only
    one-to-many      x_1         ->  y_1 .. y_T      one input at step 1, then the cell runs on
    encoder-decoder  x_1 .. x_T  ->  h_T  ->  y_1 .. y_T'
                     a many-to-one encoder whose final state is the initial state of a decoder
                     that reads a start token, then its previous output (fed back when
                     predicting, the true previous target when training)

Inputs are integer token ids, time-major `(T, B)`. Every graph has `params` (named arrays),
`loss(...) -> float` (mean cross-entropy over the steps that carry a loss; keeps caches),
`backward() -> grads` (same names as `params`; the gradient on the initial state lands in
`dstate0`), and `predict(...)`. `fit` trains any of them with charrnn's optimizers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from charrnn.layers import linear, loss
from charrnn.layers.workspace import Workspace
from charrnn.model import ModelShape, RecurrentStack, init_arrays
from charrnn.optim import Optimizer, OptimizerSettings, clip_by_global_norm


class _Graph:
    """Shared plumbing: stacks under name prefixes, one read-out `W_hy (H, C)`, `b_y (C,)`."""

    def __init__(
        self,
        stacks: dict[str, int],
        num_classes: int,
        cell: str,
        hidden_size: int,
        num_layers: int,
        seed: int,
        dtype: np.dtype,
    ) -> None:
        self.shapes = {
            prefix: ModelShape(vocab_size=inputs, cell=cell, hidden_size=hidden_size, num_layers=num_layers)
            for prefix, inputs in stacks.items()
        }
        named: dict[str, tuple[int, ...]] = {}
        for prefix, shape in self.shapes.items():
            named.update({f"{prefix}{k}": v for k, v in shape.param_shapes().items() if k.startswith("layers.")})
        named["W_hy"], named["b_y"] = (hidden_size, num_classes), (num_classes,)
        self.params = init_arrays(named, hidden_size, np.random.default_rng(seed), np.dtype(dtype))
        self.stacks = {prefix: RecurrentStack(shape, self.params, prefix) for prefix, shape in self.shapes.items()}
        self._head_ws = Workspace()
        self.dstate0: np.ndarray | None = None

    def _head_loss(self, top: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
        """Read-out and loss on `top (H, ...)` against `targets (...)`; returns loss and dtop (H, ...)."""
        logits = linear.forward(top, self.params["W_hy"], self.params["b_y"], self._head_ws)
        value, dlogits = loss.softmax_xent(logits.reshape(len(logits), -1), targets.reshape(-1))
        dtop, self._dW_hy, self._db_y = linear.backward(dlogits.reshape(logits.shape), top, self.params["W_hy"])
        return value, dtop

    def _classes(self, top: np.ndarray) -> np.ndarray:
        """top (H, ...) -> the most likely class (...)."""
        return linear.forward(top, self.params["W_hy"], self.params["b_y"]).argmax(axis=0)

    def _with_head(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        grads["W_hy"], grads["b_y"] = self._dW_hy, self._db_y
        return grads


class _OneStack(_Graph):
    """A graph with one recurrent stack; `loss` leaves the gradient on its top states in `_dtop`."""

    def __init__(
        self,
        num_inputs: int,
        num_classes: int,
        cell: str = "rnn",
        hidden_size: int = 64,
        num_layers: int = 1,
        seed: int = 0,
        dtype: np.dtype = np.float32,
    ) -> None:
        super().__init__({"": num_inputs}, num_classes, cell, hidden_size, num_layers, seed, dtype)
        self.stack = self.stacks[""]

    def backward(self) -> dict[str, np.ndarray]:
        grads, self.dstate0 = self.stack.backward(self._dtop)
        return self._with_head(grads)


class ManyToMany(_OneStack):
    """x_1..x_T -> y_1..y_T, a loss on every step."""

    def loss(self, ids: np.ndarray, targets: np.ndarray, state0: np.ndarray | None = None) -> float:
        """ids (T, B), targets (T, B); state0 (L, S, B, H) or zeros."""
        state0 = self.stack.initial_state(ids.shape[1]) if state0 is None else state0
        top, _ = self.stack.forward(ids, state0)
        value, self._dtop = self._head_loss(top, targets)
        return value

    def predict(self, ids: np.ndarray) -> np.ndarray:
        """(T, B) -> the most likely class at every step (T, B)."""
        top, _ = self.stack.forward(ids, self.stack.initial_state(ids.shape[1]), train=False)
        return self._classes(top)


class ManyToOne(_OneStack):
    """x_1..x_T -> y_T: read the whole sequence, classify it from the final hidden state."""

    def loss(self, ids: np.ndarray, labels: np.ndarray, state0: np.ndarray | None = None) -> float:
        """ids (T, B), labels (B,)."""
        state0 = self.stack.initial_state(ids.shape[1]) if state0 is None else state0
        top, _ = self.stack.forward(ids, state0)
        value, dlast = self._head_loss(top[:, -1], labels)
        self._dtop = np.zeros_like(top)
        self._dtop[:, -1] = dlast  # only the last step has a loss
        return value

    def predict(self, ids: np.ndarray) -> np.ndarray:
        """(T, B) -> one class per sequence (B,)."""
        top, _ = self.stack.forward(ids, self.stack.initial_state(ids.shape[1]), train=False)
        return self._classes(top[:, -1])


class OneToMany(_OneStack):
    """x_1 -> y_1..y_T: one input at the first step, no input after it; a loss on every step."""

    @staticmethod
    def _inputs(first: np.ndarray, steps: int) -> np.ndarray:
        ids = np.full((steps, len(first)), -1, np.int64)  # -1: no input
        ids[0] = first
        return ids

    def loss(self, first: np.ndarray, targets: np.ndarray, state0: np.ndarray | None = None) -> float:
        """first (B,) the one input; targets (T, B)."""
        state0 = self.stack.initial_state(len(first)) if state0 is None else state0
        top, _ = self.stack.forward(self._inputs(first, len(targets)), state0)
        value, self._dtop = self._head_loss(top, targets)
        return value

    def predict(self, first: np.ndarray, steps: int) -> np.ndarray:
        """(B,) -> (steps, B) classes."""
        top, _ = self.stack.forward(self._inputs(first, steps), self.stack.initial_state(len(first)), train=False)
        return self._classes(top)


class EncoderDecoder(_Graph):
    """x_1..x_T -> encoder -> h_T = decoder's h_0 -> y_1..y_T'. The encoder is trained only
    through the gradient that reaches the decoder's initial state. Decoder inputs: a start
    token (id `num_classes`), then the previous target (training) or prediction (predict)."""

    def __init__(
        self,
        num_inputs: int,
        num_classes: int,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        seed: int = 0,
        dtype: np.dtype = np.float32,
    ) -> None:
        stacks = {"encoder.": num_inputs, "decoder.": num_classes + 1}
        super().__init__(stacks, num_classes, cell, hidden_size, num_layers, seed, dtype)
        self.encoder, self.decoder = self.stacks["encoder."], self.stacks["decoder."]
        self.start = num_classes

    def loss(self, source: np.ndarray, targets: np.ndarray, state0: np.ndarray | None = None) -> float:
        """source (Ts, B), targets (Tt, B)."""
        B = source.shape[1]
        state0 = self.encoder.initial_state(B) if state0 is None else state0
        _, encoded = self.encoder.forward(source, state0)
        decoder_in = np.concatenate([np.full((1, B), self.start), targets[:-1]]).astype(np.int64)
        top, _ = self.decoder.forward(decoder_in, encoded)
        value, self._dtop = self._head_loss(top, targets)
        return value

    def backward(self) -> dict[str, np.ndarray]:
        grads, d_encoded = self.decoder.backward(self._dtop)
        encoder_grads, self.dstate0 = self.encoder.backward(None, d_encoded)
        grads.update(encoder_grads)
        return self._with_head(grads)

    def predict(self, source: np.ndarray, steps: int) -> np.ndarray:
        """(Ts, B) -> (steps, B), each prediction fed back in as the next decoder input."""
        B = source.shape[1]
        _, state = self.encoder.forward(source, self.encoder.initial_state(B), train=False)
        token = np.full((1, B), self.start, np.int64)
        out = np.empty((steps, B), np.int64)
        for t in range(steps):
            top, state = self.decoder.forward(token, state, train=False)
            out[t] = token[0] = self._classes(top[:, 0])
        return out


Graph = ManyToMany | ManyToOne | OneToMany | EncoderDecoder


def fit(
    graph: Graph,
    batch: Callable[[np.random.Generator], tuple[np.ndarray, ...]],
    steps: int,
    lr: float = 1e-2,
    grad_clip: float = 5.0,
    seed: int = 0,
) -> list[float]:
    """Train `graph` with Adam for `steps` steps on `batch(rng)` -> the arguments of `graph.loss`.

    Returns the loss of every step.
    """
    rng = np.random.default_rng(seed)
    optimizer = Optimizer(OptimizerSettings("adam"), graph.params)
    losses = []
    for _ in range(steps):
        losses.append(graph.loss(*batch(rng)))
        grads = graph.backward()
        clip_by_global_norm(grads, grad_clip)
        optimizer.step(graph.params, grads, lr)
    return losses
