"""PyTorch's layout, both ways: a charrnn model as the state dict of `nn.RNN`/`nn.LSTM`/`nn.GRU`
plus `nn.Linear`, in a safetensors file (no pickle), and such a file back into a run directory.

Names and shapes, for V characters, H units, G gates (1 rnn, 4 lstm, 3 gru), layer k:

    rnn.weight_ih_l{k}  (G*H, V for k = 0 else H)    = layers.{k}.W_xh^T
    rnn.weight_hh_l{k}  (G*H, H)                     = layers.{k}.W_hh^T
    rnn.bias_ih_l{k}    (G*H,)                       = layers.{k}.b_h
    rnn.bias_hh_l{k}    (G*H,)                       = 0 (gru: [0, 0, layers.{k}.b_hn])
    fc.weight (V, H) = W_hy^T,  fc.bias (V,) = b_y

Gate blocks are already in PyTorch's order (lstm i f g o, gru r z n). Reading a file sums the
two biases where charrnn has one (rnn, lstm: b_h = bias_ih + bias_hh; gru: the r and z blocks),
so any trained torch model converts. The file's metadata (strings) carries `format`, `vocab`
(a JSON list of characters in id order), `cell`, `hidden_size`, `num_layers`, `dropout`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from charrnn import __version__
from charrnn.api import LanguageModel
from charrnn.atomic import atomic_write
from charrnn.config import build_config
from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.extras import require
from charrnn.layers import CELLS
from charrnn.model import ModelShape
from charrnn.rundir import create_run
from charrnn.vocab import Vocab

FORMAT = "charrnn-torch-state-dict"
_KEY = re.compile(r"rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)")


def to_state_dict(shape: ModelShape, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """charrnn parameters -> PyTorch's names and layout (C-contiguous arrays)."""
    H = shape.hidden_size
    out: dict[str, np.ndarray] = {}
    for k in range(shape.num_layers):
        p = lambda name, k=k: params[f"layers.{k}.{name}"]  # noqa: E731
        out[f"rnn.weight_ih_l{k}"] = np.ascontiguousarray(p("W_xh").T)
        out[f"rnn.weight_hh_l{k}"] = np.ascontiguousarray(p("W_hh").T)
        out[f"rnn.bias_ih_l{k}"] = p("b_h").copy()
        bias_hh = np.zeros_like(p("b_h"))
        if shape.cell == "gru":
            bias_hh[2 * H :] = p("b_hn")
        out[f"rnn.bias_hh_l{k}"] = bias_hh
    out["fc.weight"] = np.ascontiguousarray(params["W_hy"].T)
    out["fc.bias"] = params["b_y"].copy()
    return out


def metadata(shape: ModelShape, vocab: Vocab, dropout: float = 0.0) -> dict[str, str]:
    """The strings beside the tensors: what `import` needs to rebuild the model."""
    return {
        "format": FORMAT,
        "charrnn_version": __version__,
        "vocab": vocab.to_json(),
        "cell": shape.cell,
        "hidden_size": str(shape.hidden_size),
        "num_layers": str(shape.num_layers),
        "dropout": str(dropout),
    }


def export_safetensors(lm: LanguageModel, out: Path) -> None:
    """Write the model as a safetensors file, atomically."""
    numpy_io = require("safetensors.numpy", "export")
    data = numpy_io.save(
        to_state_dict(lm.shape, lm.model.params), metadata(lm.shape, lm.vocab, lm.regularisers.dropout)
    )
    atomic_write(out, lambda f: f.write(data))


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file. Pickles (torch.save's .pt/.pth) are refused
    unread; so is anything that is not a safetensors file."""
    with_hint = "save it with safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise InvalidUsageError(f"cannot read {path}: {err.strerror or err}") from None
    if path.suffix in (".pt", ".pth", ".bin", ".pkl") or head[:2] in (b"PK", b"\x80\x02", b"\x80\x04"):
        raise InvalidUsageError(f"{path} looks like a pickle (torch.save); charrnn never unpickles: {with_hint}")
    safetensors = require("safetensors", "export")
    numpy_io = require("safetensors.numpy", "export")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        return numpy_io.load_file(path), meta
    except Exception as err:  # the library raises its own error types for every malformed header
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CharRNNError(f"{path} is not a readable safetensors file: {first}") from None


def from_state_dict(
    tensors: dict[str, np.ndarray], vocab: Vocab, meta: dict[str, str] | None = None, name: str = "file"
) -> tuple[ModelShape, dict[str, np.ndarray]]:
    """PyTorch's names and layout -> (shape, charrnn parameters), every key and shape checked."""
    meta = meta or {}

    def fail(what: str) -> CharRNNError:
        return CharRNNError(f"{name}: {what}")

    layers = sorted({int(m.group(2)) for key in tensors if (m := _KEY.fullmatch(key))})
    L = len(layers)
    if L == 0 or "rnn.weight_hh_l0" not in tensors:
        raise fail("no rnn.weight_hh_l0: not the state dict of an nn.RNN/LSTM/GRU named 'rnn'")
    if any(tensors[key].ndim != 2 for key in tensors if "weight" in key):
        raise fail("every weight must be a matrix")
    if layers != list(range(L)):
        raise fail(f"layers {layers} are not numbered 0..{L - 1}")
    H = tensors["rnn.weight_hh_l0"].shape[-1]
    V = len(vocab)
    gates = {k: tensors.get(f"rnn.weight_hh_l{k}", np.zeros((0, 0))).shape[0] // max(H, 1) for k in layers}
    if len(set(gates.values())) != 1:
        raise fail(f"layers have different gate counts {sorted(set(gates.values()))}: two cells mixed")
    by_gates = {module.GATES: name for name, module in CELLS.items()}
    cell = meta.get("cell") or by_gates.get(gates[0], "")
    if cell not in CELLS or gates[0] != CELLS[cell].GATES:
        raise fail(f"weight_hh_l0 has {gates[0] * H} rows for {H} units: not an rnn, lstm or gru ({cell or '?'})")
    G = gates[0] * H
    expected = {"fc.weight": (V, H), "fc.bias": (V,)}
    for k in layers:
        expected |= {
            f"rnn.weight_ih_l{k}": (G, V if k == 0 else H),
            f"rnn.weight_hh_l{k}": (G, H),
            f"rnn.bias_ih_l{k}": (G,),
            f"rnn.bias_hh_l{k}": (G,),
        }
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise fail(f"keys do not match an {cell} of {L} layers: missing {missing}, unexpected {extra}")
    if tensors["rnn.weight_ih_l0"].shape[1:] != (V,) or tensors["fc.weight"].shape[0] != V:
        got = (tensors["rnn.weight_ih_l0"].shape[-1], tensors["fc.weight"].shape[0])
        raise fail(f"the model has {got[0]} inputs and {got[1]} outputs, but the vocabulary has {V} characters")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
        found = sorted({str(t.dtype) for t in tensors.values()})
        raise fail(f"tensors must all be float32 or all float64, got {found}")
    for key, want in expected.items():
        if tensors[key].shape != want:
            raise fail(f"{key} has shape {tensors[key].shape}, expected {want}")
        if not np.isfinite(tensors[key]).all():
            raise fail(f"{key} holds NaN or inf")
    shape = ModelShape(V, cell, H, L)
    params: dict[str, np.ndarray] = {}
    for k in layers:
        t = lambda name, k=k: tensors[f"rnn.{name}_l{k}"]  # noqa: E731
        params[f"layers.{k}.W_xh"] = np.ascontiguousarray(t("weight_ih").T)
        params[f"layers.{k}.W_hh"] = np.ascontiguousarray(t("weight_hh").T)
        bias_ih, bias_hh = t("bias_ih"), t("bias_hh")
        summed = slice(0, 2 * H) if cell == "gru" else slice(0, G)
        b_h = bias_ih.copy()
        if bias_hh[summed].any():  # adding zeros would turn -0.0 into 0.0: export -> import stays bitwise
            b_h[summed] += bias_hh[summed]
        params[f"layers.{k}.b_h"] = b_h
        if cell == "gru":
            params[f"layers.{k}.b_hn"] = bias_hh[2 * H :].copy()
    params["W_hy"] = np.ascontiguousarray(tensors["fc.weight"].T)
    params["b_y"] = tensors["fc.bias"].copy()
    return shape, params


def _dropout(meta: dict[str, str]) -> float:
    """The dropout the metadata names (training only, so a rate that makes no sense is 0)."""
    try:
        dropout = float(meta.get("dropout", 0.0))
    except ValueError:
        return 0.0
    return dropout if 0 <= dropout < 1 else 0.0


def _vocab(meta: dict[str, str], vocab_file: Path | None, name: str) -> Vocab:
    if vocab_file is None and "vocab" not in meta:
        raise InvalidUsageError(
            f"{name} has no vocabulary in its metadata; pass --vocab FILE (a JSON list of characters)"
        )
    source = vocab_file or f"{name}'s metadata"
    try:
        text = vocab_file.read_text(encoding="utf-8") if vocab_file is not None else meta["vocab"]
        return Vocab(json.loads(text))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, InvalidUsageError) as err:
        raise InvalidUsageError(
            f"{source}: the vocabulary must be a JSON list of distinct characters ({err})"
        ) from None


def import_safetensors(path: Path, run_dir: Path, vocab_file: Path | None = None) -> ModelShape:
    """A safetensors state dict -> a new run directory (latest.npz, config.yaml) that samples,
    evaluates and trains on with a fresh optimizer. Everything is checked before anything is written."""
    tensors, meta = read_safetensors(path)
    vocab = _vocab(meta, vocab_file, str(path))
    shape, params = from_state_dict(tensors, vocab, meta, str(path))
    dtype = str(next(iter(params.values())).dtype)
    model = {"cell": shape.cell, "hidden_size": shape.hidden_size, "num_layers": shape.num_layers}
    config = build_config([{"model": model | {"dropout": _dropout(meta)}, "train": {"dtype": dtype}}])
    create_run(run_dir, config, vocab, params)
    return shape
