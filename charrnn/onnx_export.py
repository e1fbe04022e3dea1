"""A charrnn model as an ONNX graph of ONNX's own RNN / LSTM / GRU operators (opset 17).

    inputs:  ids (T, B) int64;  h0 (L, B, H) float32;  c0 (L, B, H) for an LSTM
    outputs: logits (T, B, V);  hT (L, B, H);          cT (L, B, H) for an LSTM

T and B are free. An id of -1 is "no input" (a zero one-hot vector), as in charrnn. Each layer
is one ONNX recurrent node fed the layer below's outputs; the read-out is MatMul + Add. ONNX
orders gate blocks differently from PyTorch and charrnn: LSTM `[i o f c]` (charrnn
`[i f g o]`), GRU `[z r h]` (charrnn `[r z n]`), and charrnn's GRU applies the reset gate after
the recurrent product and its bias, which is ONNX's `linear_before_reset=1`. The vocabulary
(JSON list, id order) and the start convention are in the model's metadata:
`vocab`, `start_id` (feed it first, then the prime; see `charrnn.vocab.Vocab.start_id`),
`cell`, `hidden_size`, `num_layers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charrnn.api import LanguageModel
from charrnn.atomic import atomic_write
from charrnn.extras import require
from charrnn.interop import metadata, to_state_dict
from charrnn.model import ModelShape

OPSET = 17
ONNX_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
TO_ONNX_GATES = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}  # PyTorch block -> ONNX position


def _reorder(array: np.ndarray, cell: str, H: int) -> np.ndarray:
    """Gate blocks (rows of H) from PyTorch's order into ONNX's."""
    blocks = [array[g * H : (g + 1) * H] for g in TO_ONNX_GATES[cell]]
    return np.concatenate(blocks).astype(np.float32)


def build(shape: ModelShape, params: dict[str, np.ndarray], meta: dict[str, str]):
    """The ONNX ModelProto of a model (float32 weights whatever the checkpoint's dtype)."""
    onnx = require("onnx", "export")
    from onnx import TensorProto, helper, numpy_helper

    cell, H, L, V = shape.cell, shape.hidden_size, shape.num_layers, shape.vocab_size
    torch_sd = to_state_dict(shape, params)
    inits: dict[str, object] = {}

    def const(name: str, array: np.ndarray) -> str:
        """An initializer (a weight or a constant operand), added once per name."""
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    one_hot = np.vstack([np.eye(V, dtype=np.float32), np.zeros((1, V), np.float32)])  # row -1: no input
    nodes = [helper.make_node("Gather", [const("one_hot", one_hot), "ids"], ["x0"], axis=0)]
    states = ["h0", "c0"] if cell == "lstm" else ["h0"]
    layer_in, finals = "x0", {s: [] for s in states}
    for k in range(L):
        W = _reorder(torch_sd[f"rnn.weight_ih_l{k}"], cell, H)[None]
        R = _reorder(torch_sd[f"rnn.weight_hh_l{k}"], cell, H)[None]
        B = np.concatenate(
            [_reorder(torch_sd[f"rnn.bias_ih_l{k}"], cell, H), _reorder(torch_sd[f"rnn.bias_hh_l{k}"], cell, H)]
        )
        layer_states = []
        for s in states:
            nodes.append(
                helper.make_node(
                    "Slice",
                    [
                        s,
                        const(f"start_{k}", np.array([k])),
                        const(f"end_{k}", np.array([k + 1])),
                        const("axis0", np.array([0])),
                    ],
                    [f"{s}_l{k}"],
                )
            )
            layer_states.append(f"{s}_l{k}")
        outputs = [f"y_l{k}", f"hT_l{k}"] + ([f"cT_l{k}"] if cell == "lstm" else [])
        attrs = {"hidden_size": H, "linear_before_reset": 1} if cell == "gru" else {"hidden_size": H}
        inputs = [layer_in, const(f"W_l{k}", W), const(f"R_l{k}", R), const(f"B_l{k}", B[None]), "", *layer_states]
        nodes.append(helper.make_node(ONNX_OP[cell], inputs, outputs, name=f"{cell}_l{k}", **attrs))
        nodes.append(helper.make_node("Squeeze", [f"y_l{k}", const("axis1", np.array([1]))], [f"x{k + 1}"]))
        for s, out in zip(states, outputs[1:], strict=True):
            finals[s].append(out)
        layer_in = f"x{k + 1}"
    for s in states:
        nodes.append(helper.make_node("Concat", finals[s], [s.replace("0", "T")], axis=0))
    nodes.append(helper.make_node("MatMul", [layer_in, const("W_hy", params["W_hy"].astype(np.float32))], ["scores"]))
    nodes.append(helper.make_node("Add", ["scores", const("b_y", params["b_y"].astype(np.float32))], ["logits"]))
    state_type = [L, "B", H]
    graph = helper.make_graph(
        nodes,
        f"charrnn_{cell}_{L}x{H}",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["T", "B"])]
        + [helper.make_tensor_value_info(s, TensorProto.FLOAT, state_type) for s in states],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", "B", V])]
        + [helper.make_tensor_value_info(s.replace("0", "T"), TensorProto.FLOAT, state_type) for s in states],
        initializer=list(inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charrnn")
    model.ir_version = 8  # opset 17's IR version: readable by every onnxruntime since 1.13
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def export_onnx(lm: LanguageModel, out: Path) -> None:
    """Write the model as an .onnx file, atomically."""
    meta = metadata(lm.shape, lm.vocab, lm.regularisers.dropout) | {"start_id": str(lm.vocab.start_id)}
    data = build(lm.shape, lm.model.params, meta).SerializeToString()
    atomic_write(out, lambda f: f.write(data))
