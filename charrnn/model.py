"""`CharRNN`: one-hot characters in, stacked recurrent cells, a linear read-out, softmax loss.

    x_t (one-hot, V) -> [cell 0] -> dropout -> [cell 1] -> ... -> h_t (H) -> output dropout
        -> y_t = W_hy^T h_t + b_y (V)

Parameters live in one flat dict of named arrays (the checkpoint's names):
`layers.{i}.W_xh` (V for layer 0, else H; G*H), `layers.{i}.W_hh` (H, G*H), `layers.{i}.b_h` (G*H,),
`layers.{i}.b_hn` (H,) for GRU only, `W_hy` (H, V), `b_y` (V,); G is the cell's number of gates.
The carried state is one array `(L, S, B, H)`: L layers, S state arrays per cell (LSTM: h, c).

Regularisers (training only, inverted so that inference uses the weights as they are; see
`Regularisers`): dropout on the outputs of the layers below the top (`dropout`) and on the top
layer's output before the read-out (`output_dropout`), each mask drawn per element or, with
`locked_dropout`, once per chunk and stream and shared by all T steps (variational dropout);
DropConnect on every `W_hh` (`weight_drop`): one mask per chunk and layer, shared by all steps
and streams, so `W_hh * M` is the recurrent matrix for the whole chunk and `dW_hh = dW_eff * M`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from charrnn.layers import CELLS, embedding, linear, loss
from charrnn.layers.workspace import Workspace, transposed


@dataclass(frozen=True)
class ModelShape:
    """What fixes the parameter shapes of a model (its regularisers are apart: `Regularisers`)."""

    vocab_size: int
    cell: str = "rnn"
    hidden_size: int = 128
    num_layers: int = 1

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every parameter, in a stable order."""
        cell = CELLS[self.cell]
        H, V, G = self.hidden_size, self.vocab_size, CELLS[self.cell].GATES * self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.num_layers):
            shapes[f"layers.{i}.W_xh"] = (V if i == 0 else H, G)
            shapes[f"layers.{i}.W_hh"] = (H, G)
            shapes[f"layers.{i}.b_h"] = (G,)
            if "b_hn" in cell.RECURRENT_PARAMS:
                shapes[f"layers.{i}.b_hn"] = (H,)
        shapes["W_hy"] = (H, V)
        shapes["b_y"] = (V,)
        return shapes

    def state_shape(self, batch: int) -> tuple[int, int, int, int]:
        """(L, S, B, H) of the carried state."""
        return (self.num_layers, CELLS[self.cell].STATE, batch, self.hidden_size)


@dataclass(frozen=True)
class Regularisers:
    """The noise a model trains with (none at inference; see the module docstring). A run may
    change them as it goes (`model.by_passes`); the parameter shapes never change."""

    dropout: float = 0.0  # on the outputs of every layer but the top
    output_dropout: float = 0.0  # on the top layer's output, before the read-out
    locked_dropout: bool = False  # one dropout mask per chunk and stream, shared over the T steps
    weight_drop: float = 0.0  # DropConnect on W_hh, one mask per chunk and layer

    @property
    def stochastic(self) -> bool:
        """Whether training draws random masks."""
        return self.dropout > 0 or self.output_dropout > 0 or self.weight_drop > 0

    def layer_dropout(self, i: int, num_layers: int) -> float:
        """The dropout rate on the output of layer i of `num_layers`."""
        return self.output_dropout if i == num_layers - 1 else self.dropout


NO_REGULARISERS = Regularisers()


def init_arrays(
    shapes: dict[str, tuple[int, ...]], hidden_size: int, rng: np.random.Generator, dtype: np.dtype
) -> dict[str, np.ndarray]:
    """Uniform(-1/sqrt(H), 1/sqrt(H)) for every named shape, as PyTorch initialises its RNNs."""
    bound = 1.0 / np.sqrt(hidden_size)
    return {name: rng.uniform(-bound, bound, size).astype(dtype) for name, size in shapes.items()}


def init_params(shape: ModelShape, rng: np.random.Generator, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Fresh parameters for a model of `shape` (see `init_arrays`)."""
    return init_arrays(shape.param_shapes(), shape.hidden_size, rng, dtype)


def dropout_mask(out: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Fill `out` with an inverted-dropout mask: 0 with probability p, else 1 / (1 - p), drawn
    as floor(u + 1 - p) / (1 - p) with u ~ U[0, 1) (the torch engine draws it the same way)."""
    keep = 1.0 - p
    rng.random(out=out, dtype=out.dtype)
    out += keep
    np.floor(out, out=out)
    out *= 1.0 / keep
    return out


class RecurrentStack:
    """Token ids in, stacked cells, top hidden states out: the part of every graph that recurs.

    Parameters are read from `params` under `{prefix}layers.{i}.*` (shared, so in-place updates
    are seen). ids < 0 mean "no input at this step" (a zero one-hot vector). Hidden sequences
    are feature-major `(H, T, B)` (see `charrnn.layers`); the carried state keeps the
    checkpoint's `(L, S, B, H)`. Training calls keep caches in their own workspaces; inference
    calls use separate ones, so evaluating between a training forward and its backward is safe.
    """

    def __init__(
        self,
        shape: ModelShape,
        params: dict[str, np.ndarray],
        prefix: str = "",
        regularisers: Regularisers = NO_REGULARISERS,
    ) -> None:
        self.shape = shape
        self.regularisers = regularisers
        self.params = params
        self.prefix = prefix
        self.cell = CELLS[shape.cell]
        self.dtype = params[f"{prefix}layers.0.W_hh"].dtype
        self._train_ws = [Workspace() for _ in range(shape.num_layers)]
        self._infer_ws = [Workspace() for _ in range(shape.num_layers)]
        self._caches: list | None = None
        self._infer_weights: list | None = None
        self._weight_masks: list[np.ndarray] = []

    def _p(self, i: int, name: str) -> np.ndarray:
        return self.params[f"{self.prefix}layers.{i}.{name}"]

    def initial_state(self, batch: int) -> np.ndarray:
        """A zero state (L, S, B, H)."""
        return np.zeros(self.shape.state_shape(batch), self.dtype)

    def prepare(self, train: bool, dropout_rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
        """Per layer, the forms of the current weights that `forward` multiplies by, in the
        training or the inference workspaces: the cell's `prepare` (see `charrnn.layers.rnn`)
        plus "input", the embedding tables for layer 0 and `W_xh^T` above it. With a
        `dropout_rng` and `weight_drop`, each layer's `W_hh` is replaced by `W_hh * M`, a fresh
        DropConnect mask M per layer, kept in `self._weight_masks` for `backward`."""
        workspaces = self._train_ws if train else self._infer_ws
        drop = self.regularisers.weight_drop if train and dropout_rng is not None else 0.0
        masks: list[np.ndarray] = []
        weights = []
        for i, ws in enumerate(workspaces):
            recurrent = {name: self._p(i, name) for name in self.cell.RECURRENT_PARAMS}
            if drop > 0:
                W_hh = recurrent["W_hh"]
                mask = dropout_mask(ws.get("W_hh_mask", W_hh.shape, self.dtype), drop, dropout_rng)
                recurrent["W_hh"] = np.multiply(W_hh, mask, out=ws.get("W_hh_dropped", W_hh.shape, self.dtype))
                masks.append(mask)
            w = self.cell.prepare(recurrent, ws)
            W_xh, b_h = self._p(i, "W_xh"), self._p(i, "b_h")
            w["input"] = embedding.table(W_xh, b_h, ws) if i == 0 else transposed(ws, "W_xh_T", W_xh)
            weights.append(w)
        if train:
            self._weight_masks = masks
        return weights

    def forward(
        self,
        ids: np.ndarray,
        state: np.ndarray,
        train: bool = True,
        dropout_rng: np.random.Generator | None = None,
        reuse_weights: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """ids (T, B), state (L, S, B, H) -> top hidden states (H, T, B), new state (L, S, B, H).

        With train=True, keeps what `backward` needs and applies the regularisers if
        `dropout_rng` is given. reuse_weights=True skips `prepare` and uses what the last
        inference call prepared: for a run of inference calls (generation, evaluation) while
        the parameters do not change.
        """
        workspaces = self._train_ws if train else self._infer_ws
        if not train:
            dropout_rng = None
        if train or not reuse_weights or self._infer_weights is None:
            weights = self.prepare(train, dropout_rng)
            if not train:
                self._infer_weights = weights
        else:
            weights = self._infer_weights
        new_state = np.empty_like(state)
        caches = []
        x: np.ndarray = ids
        for i in range(self.shape.num_layers):
            ws = workspaces[i]
            layer_input = x
            w = weights[i]
            if i == 0:
                xw = embedding.forward(ids, w["input"], ws)
            else:
                xw = linear.forward_steps(x, w["input"], self._p(i, "b_h"), ws)
            hs, stateT, cell_cache = self.cell.forward(xw, state[i].transpose(0, 2, 1), w, ws)
            new_state[i] = stateT.transpose(0, 2, 1)
            mask = None
            p = self.regularisers.layer_dropout(i, self.shape.num_layers)
            if dropout_rng is not None and p > 0:
                H, T, B = hs.shape
                mask_shape = (H, 1 if self.regularisers.locked_dropout else T, B)
                mask = dropout_mask(ws.get("mask", mask_shape, self.dtype), p, dropout_rng)
                x = np.multiply(hs, mask, out=ws.get("dropped", hs.shape, self.dtype))
            else:
                x = hs
            caches.append((layer_input, cell_cache, mask))
        if train:
            self._caches = caches
        return x, new_state

    def backward(
        self, dtop: np.ndarray | None, dstateT: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Backprop the last training forward.

        Inputs: dtop (H, T, B) gradient on the top hidden states (None: zero); dstateT
        (L, S, B, H) gradient on the final state (None: zero).
        Returns: gradients by full parameter name, dstate0 (L, S, B, H).
        """
        assert self._caches is not None, "backward() needs a training forward() first"
        grads: dict[str, np.ndarray] = {}
        batch = self._caches[0][0].shape[1]
        dstate0 = np.empty(self.shape.state_shape(batch), self.dtype)
        dx = dtop
        for i in range(self.shape.num_layers - 1, -1, -1):
            ws = self._train_ws[i]
            layer_input, cell_cache, mask = self._caches[i]
            if mask is not None and dx is not None:
                dx *= mask
            dstate_i = None if dstateT is None else dstateT[i].transpose(0, 2, 1)
            dxw, dstate0_i, cell_grads = self.cell.backward(dx, cell_cache, dstate_i, ws)
            dstate0[i] = dstate0_i.transpose(0, 2, 1)
            if self._weight_masks:
                cell_grads["W_hh"] *= self._weight_masks[i]
            for name, grad in cell_grads.items():
                grads[f"{self.prefix}layers.{i}.{name}"] = grad
            if i == 0:
                dW, db = embedding.backward(dxw, layer_input, self._p(0, "W_xh").shape[0], ws)
            else:
                dx, dW, db = linear.backward(dxw, layer_input, self._p(i, "W_xh"), ws)
            grads[f"{self.prefix}layers.{i}.W_xh"], grads[f"{self.prefix}layers.{i}.b_h"] = dW, db
        return grads, dstate0


class CharRNN:
    """The character model (many-to-many): a `RecurrentStack` and a read-out with the loss on
    every step. `loss` + `backward` train it; `logits` runs it for inference."""

    def __init__(
        self, shape: ModelShape, params: dict[str, np.ndarray], regularisers: Regularisers = NO_REGULARISERS
    ) -> None:
        self.shape = shape
        self.params = params
        self.stack = RecurrentStack(shape, params, regularisers=regularisers)
        self.dtype = params["W_hy"].dtype
        self._head_ws, self._infer_head_ws = Workspace(), Workspace()
        self._cache: tuple | None = None

    def initial_state(self, batch: int) -> np.ndarray:
        """A zero state (L, S, B, H)."""
        return self.stack.initial_state(batch)

    @property
    def regularisers(self) -> Regularisers:
        return self.stack.regularisers

    def regularise(self, regularisers: Regularisers) -> None:
        """Train on with other regularisers (`model.by_passes`)."""
        self.stack.regularisers = regularisers

    def loss(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        state: np.ndarray,
        dropout_rng: np.random.Generator | None = None,
    ) -> tuple[float, np.ndarray]:
        """Mean cross-entropy (nats per char) of predicting `targets` (T, B) from `ids` (T, B).

        Keeps what `backward` needs. Dropout is applied only when `dropout_rng` is given.
        Returns: loss, the new state (L, S, B, H). (One of the places a text's cross-entropy is
        computed: see `charrnn.evaluate.sum_xent`.)
        """
        top, new_state = self.stack.forward(ids, state, True, dropout_rng)
        logits = linear.forward(top, self.params["W_hy"], self.params["b_y"], self._head_ws)
        V = self.shape.vocab_size
        value, dlogits = loss.softmax_xent(logits.reshape(V, -1), targets.reshape(-1))
        self._cache = (top, dlogits.reshape(logits.shape))
        return value, new_state

    def backward(self, dstateT: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Gradients of the last `loss` for every parameter (arrays owned by the model's workspaces).

        dstateT (L, S, B, H): a gradient on the final state from outside the chunk (None: zero).
        The gradient on the initial state is left in `self.dstate0` (L, S, B, H).
        """
        assert self._cache is not None, "backward() needs a loss() first"
        top, dlogits = self._cache
        dtop, dW_hy, db_y = linear.backward(dlogits, top, self.params["W_hy"], self._head_ws)
        grads, self.dstate0 = self.stack.backward(dtop, dstateT)
        grads["W_hy"], grads["b_y"] = dW_hy, db_y
        return grads

    def logits(self, ids: np.ndarray, state: np.ndarray, reuse_weights: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Inference: ids (T, B), state (L, S, B, H) -> logits (V, T, B), new state. No dropout.

        reuse_weights=True: the parameters have not changed since the last `logits` call (see
        `RecurrentStack.forward`).
        """
        top, new_state = self.stack.forward(ids, state, train=False, reuse_weights=reuse_weights)
        return linear.forward(top, self.params["W_hy"], self.params["b_y"], self._infer_head_ws), new_state
