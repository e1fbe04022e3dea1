"""The torch engine (`train.engine: torch`): charrnn's model, batches, loss, optimizers and
schedule on PyTorch's arithmetic, on a CPU or a GPU, in one process or many under `torchrun`.

The model is one `nn.RNN`/`nn.LSTM`/`nn.GRU` per layer and an `nn.Linear` read-out, fed one-hot
characters, with the numpy engine's regularisers (`charrnn.model`): inverted dropout between the
layers and before the read-out, per element or locked over the chunk's steps, and DropConnect
on `weight_hh` (the module called with `weight_hh * M` by `torch.func.functional_call`), every
mask drawn from the engine's own `torch.Generator`, saved with the checkpoint. charrnn's
parameters are views of the modules' tensors (`interop.py` proves the mapping): `layers.{k}.W_xh`
= `weight_ih_l0^T`, `W_hh` = `weight_hh_l0^T`, `b_h` = `bias_ih_l0`, a GRU's `b_hn` =
`bias_hh_l0[2H:]`, `W_hy` = `weight^T`, `b_y` = `bias`. The rest of `bias_hh_l0`, which charrnn
does not have, stays zero: never updated. The optimizer is charrnn's own definition
(`charrnn.optim`), written again in torch operations on those views, in the same order of
operations, so both engines agree to rounding.

On a GPU everything stays on the device: the chunk's ids go up, nothing comes down but what a
metrics event logs (the loss, read by `float()`), an evaluation's sum, and a checkpoint.

Under `torchrun` (`charrnn.distributed`), each of the K processes trains B/K of the B streams
and the gradients are averaged over them before clipping: the same update as one process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from charrnn.distributed import World
from charrnn.engine import EngineState, StepSettings
from charrnn.errors import InvalidUsageError
from charrnn.extras import require
from charrnn.model import Regularisers
from charrnn.optim import SLOTS

torch = require("torch", "torch")
F = torch.nn.functional

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def resolve_device(device: str) -> Any:
    """`train.device` as a torch.device; a device torch cannot use is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidUsageError(f"train.device={device}, but torch sees no CUDA device; use cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InvalidUsageError(f"train.device={device}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InvalidUsageError("train.device=mps, but torch sees no MPS device; use cpu or auto")
    return torch.device(device)


class TorchEngine:
    """charrnn's training step on PyTorch (see the module docstring)."""

    name = "torch"

    def __init__(self, settings: StepSettings, state: EngineState, device: str, world: World | None = None) -> None:
        self.shape, self.regularisers, self.grad_clip = settings.shape, settings.regularisers, settings.grad_clip
        self.settings = settings.optimizer
        self.world = world or World.current()
        self.device = self.world.device or resolve_device(device)
        self.name = f"torch ({self.device})"
        self.dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
            state.params["W_hy"].dtype
        ]
        self._build(state)
        self.moments = {
            f"{slot}.{name}": self._tensor(state.optim_state[f"{slot}.{name}"])
            if state.optim_state
            else torch.zeros_like(view)
            for slot in SLOTS[self.settings.kind]
            for name, view in self.params.items()
        }
        self.t = state.optimizer_t
        self.carry = None if state.carry is None else self._local_streams(self._tensor(state.carry))
        self.generator = self._generator(state)
        self.numpy_rng = state.rng  # the numpy engine's generator, kept for a switch back

    def _build(self, state: EngineState) -> None:
        """The modules on the device, holding the state's weights; `params` their charrnn views."""
        H, V, L = self.shape.hidden_size, self.shape.vocab_size, self.shape.num_layers
        Module = MODULES[self.shape.cell]
        with torch.random.fork_rng(devices=[]):  # the modules' own initialisation is overwritten below
            self.layers = [Module(V if k == 0 else H, H) for k in range(L)]
            self.readout = torch.nn.Linear(H, V)
        for module in [*self.layers, self.readout]:
            module.to(device=self.device, dtype=self.dtype)
        self._where = self._places()
        self.params = {name: view(param.detach()) for name, (param, view) in self._where.items()}
        with torch.no_grad():
            for layer in self.layers:
                layer.bias_hh_l0.zero_()
                if self.shape.cell != "gru":
                    layer.bias_hh_l0.requires_grad_(False)  # charrnn has one bias per gate block
            for name, view in self.params.items():
                view.copy_(torch.from_numpy(state.params[name]))

    def _generator(self, state: EngineState) -> Any:
        """The dropout generator: as saved, or, the first time on this engine, seeded from the
        run's numpy generator."""
        generator = torch.Generator(device=self.device)
        if state.torch_rng is not None:
            generator.set_state(torch.tensor(state.torch_rng, dtype=torch.uint8))
        else:
            numpy_rng = np.random.default_rng()
            numpy_rng.bit_generator.state = state.rng
            generator.manual_seed(int(numpy_rng.integers(2**63)))
        return generator

    def _places(self) -> dict[str, tuple[Any, Any]]:
        """charrnn's parameter names, in the model's order -> (the module's tensor, how charrnn's
        parameter is a view of it): the same view of the tensor's `.grad` is its gradient."""
        H = self.shape.hidden_size

        def transposed(t: Any) -> Any:
            return t.T

        def whole(t: Any) -> Any:
            return t

        def last_block(t: Any) -> Any:
            return t[2 * H :]

        places = {"W_hy": (self.readout.weight, transposed), "b_y": (self.readout.bias, whole)}
        for k, layer in enumerate(self.layers):
            places[f"layers.{k}.W_xh"] = (layer.weight_ih_l0, transposed)
            places[f"layers.{k}.W_hh"] = (layer.weight_hh_l0, transposed)
            places[f"layers.{k}.b_h"] = (layer.bias_ih_l0, whole)
            places[f"layers.{k}.b_hn"] = (layer.bias_hh_l0, last_block)
        return {name: places[name] for name in self.shape.param_shapes()}

    def _tensor(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=self.device, dtype=self.dtype)

    def _local_streams(self, carry: Any) -> Any:
        """This process's share of the B streams of a carried state (L, S, B, H)."""
        return carry[:, :, self.world.streams(carry.shape[2])]

    def _ids(self, ids: np.ndarray) -> Any:
        """A chunk's ids (T, B) -> this process's streams, on the device."""
        local = np.ascontiguousarray(ids[:, self.world.streams(ids.shape[1])])
        return torch.from_numpy(local).to(self.device, non_blocking=True)

    def _forward(self, x: Any, carry: Any, train: bool) -> tuple[Any, Any]:
        """ids (T, B) on the device, carry (L, S, B, H) -> logits (T, B, V), new carry."""
        layer_input = F.one_hot(x, self.shape.vocab_size).to(self.dtype)
        finals = []
        for k, layer in enumerate(self.layers):
            if self.shape.cell == "lstm":
                state: Any = (carry[k, 0][None].contiguous(), carry[k, 1][None].contiguous())
            else:
                state = carry[k, 0][None].contiguous()
            regs = self.regularisers
            if train and regs.weight_drop > 0:
                W = layer.weight_hh_l0  # (G, H): charrnn's W_hh (H, G) transposed, as is its mask
                mask = self._dropout_mask((W.shape[1], W.shape[0]), regs.weight_drop).T
                out, final = torch.func.functional_call(layer, {"weight_hh_l0": W * mask}, (layer_input, state))
            else:
                out, final = layer(layer_input, state)
            finals.append(torch.cat(final) if self.shape.cell == "lstm" else final)
            p = regs.layer_dropout(k, len(self.layers))
            if train and p > 0:
                T, B, H = out.shape  # the mask is drawn in the numpy engine's (H, T, B) layout
                out = out * self._dropout_mask((H, 1 if regs.locked_dropout else T, B), p).permute(1, 2, 0)
            layer_input = out
        return self.readout(layer_input), torch.stack(finals)

    def _dropout_mask(self, size: tuple[int, ...], p: float) -> Any:
        """Inverted dropout, as the numpy engine draws it: floor(u + keep) / keep, u ~ U[0, 1)."""
        keep = 1.0 - p
        mask = torch.rand(size, generator=self.generator, device=self.device, dtype=self.dtype)
        return mask.add_(keep).floor_().mul_(1.0 / keep)

    def step(self, inputs: np.ndarray, targets: np.ndarray, lr: float) -> Any:
        x, y = self._ids(inputs), self._ids(targets)
        if self.carry is None:
            L, S, B, H = self.shape.state_shape(x.shape[1])
            self.carry = torch.zeros((L, S, B, H), device=self.device, dtype=self.dtype)
        for module in [*self.layers, self.readout]:
            module.zero_grad(set_to_none=False)
        logits, carry = self._forward(x, self.carry, train=True)
        loss = F.cross_entropy(logits.reshape(-1, self.shape.vocab_size), y.reshape(-1))
        loss.backward()
        self.world.average([p.grad for p in self._trained()])
        grads = {name: view(param.grad) for name, (param, view) in self._where.items()}
        with torch.no_grad():
            self._clip(grads)
            self._update(grads, lr)
        self.carry = carry.detach()
        return self.world.mean(loss.detach())

    def _trained(self) -> list[Any]:
        return [p for module in [*self.layers, self.readout] for p in module.parameters() if p.requires_grad]

    def _clip(self, grads: dict[str, Any]) -> None:
        """`charrnn.optim.clip_by_global_norm` on the device: no host round trip. A non-finite
        norm makes the weights non-finite, which the next metrics event reports."""
        if self.grad_clip <= 0:
            return
        norm = torch.sqrt(sum(torch.sum(g * g, dtype=torch.float64) for g in grads.values()))
        scale = torch.clamp(self.grad_clip / norm, max=1.0).to(self.dtype)
        for g in grads.values():
            g.mul_(scale)

    def _update(self, grads: dict[str, Any], lr: float) -> None:
        """`charrnn.optim.Optimizer.step`, operation for operation."""
        self.t += 1
        c = self.settings
        for name, p in self.params.items():
            g = grads[name]
            if c.weight_decay and p.ndim >= 2:
                p.mul_(1 - lr * c.weight_decay)
            if c.kind == "adam":
                m, v = self.moments[f"m.{name}"], self.moments[f"v.{name}"]
                m.mul_(c.beta1).add_(g * (1 - c.beta1))
                v.mul_(c.beta2).add_((g * g).mul_(1 - c.beta2))
                denom = torch.sqrt(v).mul_(1 / math.sqrt(1 - c.beta2**self.t)).add_(c.eps)
                step = torch.div(m, denom).mul_(lr / (1 - c.beta1**self.t))
            elif c.kind == "adagrad":
                sum_sq = self.moments[f"sum_sq.{name}"]
                sum_sq.add_(g * g)
                step = torch.div(g, torch.sqrt(sum_sq).add_(c.eps)).mul_(lr)
            else:
                velocity = self.moments[f"velocity.{name}"]
                velocity.mul_(c.momentum).add_(g)
                step = velocity * lr
            p.sub_(step)

    def new_epoch(self) -> None:
        self.carry = None

    def carried_streams(self) -> int | None:
        return None if self.carry is None else self.carry.shape[2] * self.world.size

    def regularise(self, regularisers: Regularisers) -> None:
        self.regularisers = regularisers

    @torch.no_grad()
    def evaluate(self, ids: np.ndarray, streams: int, seq_len: int) -> float:
        """`charrnn.evaluate.evaluate` on the device (every process computes it whole); one of the
        places a text's cross-entropy is summed (see `charrnn.evaluate.sum_xent`)."""
        S = max(1, min(streams, len(ids) - 1))
        n = (len(ids) - 1) // S
        inputs = torch.from_numpy(np.asarray(ids[: S * n], dtype=np.int64).reshape(S, n).T.copy()).to(self.device)
        targets = torch.from_numpy(np.asarray(ids[1 : S * n + 1], dtype=np.int64).reshape(S, n).T.copy())
        targets = targets.to(self.device)
        carry = torch.zeros(self.shape.state_shape(S), device=self.device, dtype=self.dtype)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for start in range(0, n, seq_len):
            logits, carry = self._forward(inputs[start : start + seq_len], carry, train=False)
            chunk = targets[start : start + seq_len].reshape(-1)
            total += F.cross_entropy(logits.reshape(-1, self.shape.vocab_size).double(), chunk, reduction="sum")
        return float(total) / (S * n)

    def state(self) -> EngineState:
        """The contents as numpy arrays; under torchrun, the carried streams of every process."""

        def host(tensor: Any) -> np.ndarray:
            return tensor.detach().cpu().contiguous().numpy().copy()

        carry = None if self.carry is None else host(self.world.gather_streams(self.carry))
        return EngineState(
            {name: host(view) for name, view in self.params.items()},
            {key: host(moment) for key, moment in self.moments.items()},
            self.t,
            carry,
            self.numpy_rng,
            self.generator.get_state().tolist(),
        )
