"""Continue training a charrnn model in PyTorch (on a GPU when there is one), then bring it back.

    charrnn export -m runs/shakespeare model.safetensors
    python examples/continue_in_pytorch.py model.safetensors corpus.txt --steps 2000 -o runs/more

Loads the exported weights into torch's nn.RNN/LSTM/GRU + nn.Linear (strict), trains on the
same kind of batches as charrnn (B contiguous streams of the text, T steps per chunk, the hidden
state carried between chunks: truncated BPTT), saves the result as safetensors with the same
metadata, then runs `charrnn import` into RUN_DIR and `charrnn sample` from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file


class CharModel(torch.nn.Module):
    """charrnn's model in torch: one-hot characters, stacked cells named `rnn`, read-out `fc`."""

    def __init__(self, cell: str, vocab_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
        self.vocab_size = vocab_size
        self.rnn = kind(vocab_size, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.fc = torch.nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        """ids (T, B) -> logits (T, B, V), new state."""
        out, state = self.rnn(F.one_hot(ids, self.vocab_size).float(), state)
        return self.fc(out), state


def batches(ids: np.ndarray, B: int, T: int):
    """(inputs, targets) chunks of (T, B), in order, forever: stream b reads its own stretch."""
    length = (len(ids) - 1) // B
    if length < T:
        sys.exit(f"the corpus is too short for {B} streams of {T} steps")
    x = torch.from_numpy(ids[: B * length].reshape(B, length).T.copy())
    y = torch.from_numpy(ids[1 : B * length + 1].reshape(B, length).T.copy())
    while True:
        for start in range(0, length - T + 1, T):
            yield x[start : start + T], y[start : start + T], start == 0


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a .safetensors file written by `charrnn export`")
    parser.add_argument("corpus", help="UTF-8 text to train on")
    parser.add_argument("-o", "--run-dir", required=True, help="charrnn run directory to import into")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    opts = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with safe_open(opts.weights, framework="pt") as f:
        meta = f.metadata()
    chars = json.loads(meta["vocab"])
    sizes = int(meta["hidden_size"]), int(meta["num_layers"])
    model = CharModel(meta["cell"], len(chars), *sizes, float(meta["dropout"]))
    model.load_state_dict(load_file(opts.weights), strict=True)
    model.to(device).train()

    index = {ch: i for i, ch in enumerate(chars)}
    text = Path(opts.corpus).read_text(encoding="utf-8")
    ids = np.array([index[ch] for ch in text if ch in index], np.int64)  # charrnn's vocabulary is fixed here
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    state = None
    for step, (x, y, new_epoch) in zip(range(opts.steps), batches(ids, opts.batch_size, opts.seq_len), strict=False):
        logits, state = model(x.to(device), None if new_epoch else state)
        state = detach(state)
        loss = F.cross_entropy(logits.reshape(-1, len(chars)), y.to(device).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 100 == 0 or step == opts.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({device})", file=sys.stderr)

    out = Path(opts.run_dir).with_suffix(".safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out, metadata=meta)
    charrnn = [sys.executable, "-m", "charrnn"]
    subprocess.run([*charrnn, "import", str(out), "-o", opts.run_dir], check=True)
    subprocess.run([*charrnn, "sample", "-m", opts.run_dir, "-n", "200", "--seed", "1"], check=True)


if __name__ == "__main__":
    main()
