"""Generate text from a charrnn model exported to ONNX, with numpy and onnxruntime alone.

    charrnn export -m runs/shakespeare model.onnx
    python examples/onnx_sample.py model.onnx --prime "ROMEO:" -n 200

Greedy (always the most likely character), so it prints exactly what
`charrnn sample --greedy -p PRIME -n N` prints. The convention is charrnn's: feed the model's
start id (from the metadata: the newline), then the prime, then each prediction back in.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort


def greedy(session: ort.InferenceSession, prime: str, length: int) -> str:
    meta = session.get_modelmeta().custom_metadata_map
    chars = json.loads(meta["vocab"])
    ids = {ch: i for i, ch in enumerate(chars)}
    layers, hidden = int(meta["num_layers"]), int(meta["hidden_size"])
    state_names = [i.name for i in session.get_inputs() if i.name != "ids"]  # h0, and c0 for an LSTM
    state = {name: np.zeros((layers, 1, hidden), np.float32) for name in state_names}
    feed = [int(meta["start_id"])] + [ids[ch] for ch in prime]
    out = []
    for _ in range(length):
        logits, *finals = session.run(None, {"ids": np.array(feed, np.int64)[:, None], **state})
        state = dict(zip(state_names, finals, strict=True))
        feed = [int(logits[-1, 0].argmax())]
        out.append(chars[feed[0]])
    return prime + "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by `charrnn export`")
    parser.add_argument("--prime", "-p", default="")
    parser.add_argument("-n", type=int, default=200, help="characters to generate")
    opts = parser.parse_args()
    print(greedy(ort.InferenceSession(opts.model), opts.prime, opts.n), end="")


if __name__ == "__main__":
    main()
