"""One measurement in a fresh process, printed as one JSON line: charrnn or the PyTorch reference.

    python benchmarks/worker.py {charrnn|torch} train CELL H LAYERS B T STEPS
    python benchmarks/worker.py {charrnn|torch} sample CELL H LAYERS STREAMS CHARS
    python benchmarks/worker.py {charrnn|torch} eval CELL H LAYERS
    python benchmarks/worker.py {charrnn|torch} score CELL H LAYERS LINES

Both engines see the same data: tinyshakespeare from ../shared/data, the last 10% held out,
charrnn's Batcher for the training chunks. Each process uses the same number of BLAS threads
(torch.set_num_threads = OPENBLAS_NUM_THREADS, default: all cores). Training chars/s is the
median over the steps after a warm-up; peak RSS is the process's ru_maxrss.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT))

from charrnn.config import TrainConfig  # noqa: E402
from charrnn.data import Batcher, split_train_val  # noqa: E402
from charrnn.vocab import Vocab  # noqa: E402

THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1))
WARMUP = 5


def corpus() -> tuple[np.ndarray, np.ndarray, int]:
    text = CORPUS.read_text(encoding="utf-8")
    vocab = Vocab.from_chars(text)
    train, val = split_train_val(vocab.encode(text), 0.1)
    return train, val, len(vocab)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- charrnn


def charrnn_model(cell: str, H: int, L: int, V: int):
    from charrnn.model import CharRNN, ModelShape, init_params

    shape = ModelShape(V, cell, H, L)
    return CharRNN(shape, init_params(shape, np.random.default_rng(0), np.dtype(np.float32)))


def charrnn_train(cell: str, H: int, L: int, B: int, T: int, steps: int) -> list[float]:
    from charrnn.optim import Optimizer, clip_by_global_norm

    train, _, V = corpus()
    batcher = Batcher(train, B, T)
    model = charrnn_model(cell, H, L, V)
    opt = Optimizer(TrainConfig().optimizer_settings(), model.params)
    state = model.initial_state(B)
    times = []
    for step in range(WARMUP + steps):
        start = time.perf_counter()
        x, y = batcher.chunk(step % batcher.chunks_per_epoch)
        _, state = model.loss(x, y, state)
        grads = model.backward()
        clip_by_global_norm(grads, 5.0)
        opt.step(model.params, grads, 2e-3)
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def charrnn_sample(cell: str, H: int, L: int, streams: int, chars: int) -> float:
    from charrnn.sample import generate

    _, _, V = corpus()
    model = charrnn_model(cell, H, L, V)
    vocab = Vocab([chr(65 + i) for i in range(V)])
    start = time.perf_counter()
    for _ in generate(model, vocab, [""] * streams, chars, seed=0):
        pass
    return streams * chars / (time.perf_counter() - start)


def score_lines(count: int) -> tuple[list[str], Vocab]:
    """`count` lines of tinyshakespeare, cycling (the empty lines dropped)."""
    text = CORPUS.read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line]
    return [lines[i % len(lines)] for i in range(count)], Vocab.from_chars(text)


def charrnn_score(cell: str, H: int, L: int, count: int) -> float:
    from charrnn.score import score_records

    lines, vocab = score_lines(count)
    model = charrnn_model(cell, H, L, len(vocab))
    start = time.perf_counter()
    chars = sum(s.chars for s in score_records(model, vocab, lines))
    return chars / (time.perf_counter() - start)


def charrnn_eval(cell: str, H: int, L: int) -> float:
    from charrnn.evaluate import evaluate

    _, val, V = corpus()
    model = charrnn_model(cell, H, L, V)
    start = time.perf_counter()
    evaluate(model, val, streams=1, seq_len=256)
    return (len(val) - 1) / (time.perf_counter() - start)


# ---------------------------------------------------------------- PyTorch reference


def torch_model(cell: str, H: int, L: int, V: int):
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    return kind(V, H, num_layers=L, **kwargs), torch.nn.Linear(H, V)


def torch_zero_state(cell: str, H: int, L: int, B: int):
    import torch

    h = torch.zeros(L, B, H)
    return (h, torch.zeros(L, B, H)) if cell == "lstm" else h


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def torch_train(cell: str, H: int, L: int, B: int, T: int, steps: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    train, _, V = corpus()
    batcher = Batcher(train, B, T)
    rnn, head = torch_model(cell, H, L, V)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    state = torch_zero_state(cell, H, L, B)
    times = []
    for step in range(WARMUP + steps):
        start = time.perf_counter()
        x, y = batcher.chunk(step % batcher.chunks_per_epoch)
        inputs = F.one_hot(torch.from_numpy(x), V).float()
        out, state = rnn(inputs, state)
        state = detach(state)
        loss = F.cross_entropy(head(out).reshape(-1, V), torch.from_numpy(y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def torch_sample(cell: str, H: int, L: int, streams: int, chars: int) -> float:
    import torch
    import torch.nn.functional as F

    _, _, V = corpus()
    rnn, head = torch_model(cell, H, L, V)
    gen = torch.Generator().manual_seed(0)
    state = torch_zero_state(cell, H, L, streams)
    ids = torch.zeros(streams, dtype=torch.long)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(chars):
            out, state = rnn(F.one_hot(ids, V).float()[None], state)
            probs = torch.softmax(head(out[0]), dim=-1)
            ids = torch.multinomial(probs, 1, generator=gen)[:, 0]
    return streams * chars / (time.perf_counter() - start)


def torch_eval(cell: str, H: int, L: int) -> float:
    import torch
    import torch.nn.functional as F

    _, val, V = corpus()
    rnn, head = torch_model(cell, H, L, V)
    ids = torch.from_numpy(val.astype(np.int64))
    state = torch_zero_state(cell, H, L, 1)
    total = 0.0
    start = time.perf_counter()
    with torch.no_grad():
        for pos in range(0, len(ids) - 1, 256):
            x, y = ids[pos : pos + 256], ids[pos + 1 : pos + 257]
            x = x[: len(y)]
            out, state = rnn(F.one_hot(x, V).float()[:, None], state)
            total += F.cross_entropy(head(out[:, 0]), y, reduction="sum").item()
    return (len(val) - 1) / (time.perf_counter() - start)


def torch_score(cell: str, H: int, L: int, count: int) -> float:
    """The same work as charrnn's score: blocks of 4,096 lines sorted by length, batches of 512
    right-padded streams from the state after a newline, masked per-position cross-entropy."""
    import torch
    import torch.nn.functional as F

    lines, vocab = score_lines(count)
    V = len(vocab)
    rnn, head = torch_model(cell, H, L, V)
    start = time.perf_counter()
    chars = 0
    with torch.no_grad():
        for first in range(0, len(lines), 4096):
            block = [vocab.encode(line).astype(np.int64) for line in lines[first : first + 4096]]
            order = sorted(range(len(block)), key=lambda k: len(block[k]))
            losses = np.zeros(len(block))
            for b0 in range(0, len(order), 512):
                batch = [block[k] for k in order[b0 : b0 + 512]]
                T, B = max(len(s) for s in batch), len(batch)
                x = torch.full((T, B), vocab.start_id, dtype=torch.long)
                y = torch.zeros((T, B), dtype=torch.long)
                mask = torch.zeros((T, B))
                for b, seq in enumerate(batch):
                    x[1 : len(seq), b] = torch.from_numpy(seq[:-1])
                    y[: len(seq), b] = torch.from_numpy(seq)
                    mask[: len(seq), b] = 1
                out, _ = rnn(F.one_hot(x, V).float(), torch_zero_state(cell, H, L, B))
                nll = F.cross_entropy(head(out).reshape(-1, V), y.reshape(-1), reduction="none").reshape(T, B)
                losses[order[b0 : b0 + 512]] = (nll * mask).sum(0).numpy()
                chars += int(mask.sum())
    return chars / (time.perf_counter() - start)


def main() -> None:
    engine, task, cell, *numbers = sys.argv[1:]
    args = [int(n) for n in numbers]
    fn = globals()[f"{engine}_{task}"]
    result = fn(cell, *args)
    if task == "train":
        B, T = args[2], args[3]
        out = {"chars_per_sec": B * T / statistics.median(result), "steps": len(result)}
    else:
        out = {"chars_per_sec": result}
    out.update(engine=engine, task=task, peak_rss_mib=peak_rss_mib(), threads=THREADS)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
