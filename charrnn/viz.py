"""Inside a model: its surprise at each character of a text, every hidden unit's activation, and
the units that track simple features of the text, as one self-contained HTML page.

The page (`viz_page.html`, package data) renders a JSON blob with its own script; text goes in
through `textContent`, never into markup. Activations are quantised to 31 levels (h in [-1, 1]
as round(Q h), Q = 15; an LSTM's cell state per unit as round(Q c / max|c|)): a colour step of
1/15 is finer than the eye separates on the blue-white-red scale, and the 5-bit values compress
to about 40% of int8 ones. They are stored unit by unit as int8, zlib-compressed and
base64-encoded; the page inflates them with the browser's DecompressionStream.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from charrnn.api import LanguageModel
from charrnn.atomic import atomic_write
from charrnn.layers.loss import log_softmax_at

TOP_K = 5
MAX_VIZ_CHARS = 50_000  # with the default GRU 2x256: a page of about 7 MB, written in under 300 MB
CANDIDATES = 3  # units listed per feature
UNIT_BLOCK = 32  # units correlated at a time
Q = 15  # activations are stored as round(Q * value), value in [-1, 1]


@dataclass
class Trace:
    """The model read over a text from the start state, one character at a time.

    text (n chars); ids (n,) with -1 for characters outside the vocabulary (fed as no input);
    loss (n,) -log p(char i | chars before it), NaN where unknown; top_ids, top_p (n, TOP_K):
    the most likely next characters after reading char i; states {"L{l}.h": (H, n), "L{l}.c"
    for an LSTM}: each unit's value after reading char i.
    """

    text: str
    ids: np.ndarray
    loss: np.ndarray
    top_ids: np.ndarray
    top_p: np.ndarray
    states: dict[str, np.ndarray]


def trace(lm: LanguageModel, text: str) -> Trace:
    """Run the model over `text` step by step, keeping every layer's state after every character.
    Its surprise is one of the places a text's cross-entropy is computed (see `evaluate.sum_xent`)."""
    model, vocab = lm.model, lm.vocab
    ids = vocab.lookup(text).astype(np.int64)
    n = len(ids)
    feed = np.concatenate([[vocab.start_id], ids])  # call k reads feed[k] and predicts text[k]
    state = model.initial_state(1)
    L, S, _, H = state.shape
    logits = np.empty((len(vocab), n + 1), np.float64)
    states = np.empty((L, S, H, n), state.dtype)
    for k, x in enumerate(feed):
        out, state = model.logits(np.array([[x]]), state, reuse_weights=k > 0)
        logits[:, k] = out[:, 0, 0]
        if k:
            states[:, :, :, k - 1] = state[:, :, 0, :]
    probs, log_p = log_softmax_at(logits, np.concatenate([np.maximum(ids, 0), [0]]))
    loss = np.where(ids >= 0, -log_p[:n], np.nan)
    after = probs[:, 1:]  # predictions after reading char i: (V, n)
    top_ids = np.argsort(-after, axis=0, kind="stable")[:TOP_K].T
    top_p = np.take_along_axis(after.T, top_ids, axis=1)
    kinds = ("h", "c")[:S]
    named = {f"L{layer}.{kinds[s]}": states[layer, s] for layer in range(L) for s in range(S)}
    return Trace(text, ids, loss, top_ids, top_p, named)


def _features(text: str) -> dict[str, np.ndarray]:
    """Per character (after reading it): simple properties of the text that a unit might track."""
    depth, quoted, column = [], [], []
    d, q, c = 0, False, 0
    for ch in text:
        if ch == '"':
            q = not q
        d = max(0, d + (ch in "([{") - (ch in ")]}"))
        c = 0 if ch == "\n" else c + 1
        depth.append(d)
        quoted.append(q)
        column.append(c)
    alnum = np.array([ch.isalnum() for ch in text])
    word_start = alnum & ~np.concatenate([[False], alnum[:-1]])
    return {
        "inside double quotes": np.array(quoted, float),
        "bracket/parenthesis depth": np.array(depth, float),
        "position in the line": np.array(column, float),
        "start of a word": word_start.astype(float),
        "upper case": np.array([ch.isupper() for ch in text], float),
    }


def correlations(tr: Trace) -> dict[str, list[tuple[str, int, float]]]:
    """For each feature that varies in the text, the CANDIDATES units (name, index, Pearson r)
    whose activation correlates most with it, strongest |r| first. In float64, UNIT_BLOCK units
    at a time, never a standardised copy of all of them: r = units @ (f - mean f) / (n std_u std_f)."""
    features = {name: f - f.mean() for name, f in _features(tr.text).items() if f.std() > 0}
    n = len(tr.text)
    r: dict[str, list[np.ndarray]] = {feature: [] for feature in features}
    for values in tr.states.values():
        for start in range(0, len(values), UNIT_BLOCK):
            units = values[start : start + UNIT_BLOCK].astype(np.float64)  # (units, n)
            std = units.std(axis=1)
            for feature, centred in features.items():
                cov = units @ centred / n
                r[feature].append(np.divide(cov, std * centred.std(), out=np.zeros_like(cov), where=std > 0))
    names, H = list(tr.states), next(iter(tr.states.values())).shape[0]
    found: dict[str, list[tuple[str, int, float]]] = {}
    for feature, per_layer in r.items():
        scores = np.concatenate(per_layer)
        best = np.argsort(-np.abs(scores), kind="stable")[:CANDIDATES]
        found[feature] = [(names[u // H], int(u % H), float(scores[u])) for u in best]
    return found


def _pack(values: np.ndarray) -> str:
    """(U, n) values in [-1, 1] -> base64(zlib(int8 round(Q * value), unit-major))."""
    q = np.clip(values, -1, 1)  # one temporary, scaled and rounded in place
    q *= Q
    np.round(q, out=q)
    q = q.astype(np.int8)
    return base64.b64encode(zlib.compress(q.tobytes(), 6)).decode("ascii")


def page_data(lm: LanguageModel, tr: Trace) -> dict:
    """Everything the page shows, as plain JSON-able values."""
    s = lm.shape
    layers = {}
    for name, values in tr.states.items():
        if name.endswith(".h"):  # h is in [-1, 1] for every cell: a fixed scale keeps colours comparable
            layers[name] = {"data": _pack(values), "scale": None}
        else:  # a cell state is unbounded: each unit is divided by its largest magnitude in the text
            scale = np.abs(values).max(axis=1)
            scale[scale == 0] = 1
            layers[name] = {"data": _pack(values / scale[:, None]), "scale": [round(float(x), 5) for x in scale]}
    return {
        "model": f"{s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}",
        "source": str(lm.path),
        "text": tr.text,
        "chars": list(lm.vocab.chars),
        "unknown": [int(i) for i in np.flatnonzero(tr.ids < 0)],
        "loss": [None if np.isnan(v) else round(float(v), 3) for v in tr.loss],
        "top_ids": tr.top_ids.ravel().tolist(),
        "top_p": np.round(tr.top_p.ravel() * 1000).astype(int).tolist(),  # per mille
        "top_k": TOP_K,
        "hidden": s.hidden_size,
        "q": Q,
        "layers": layers,
        "candidates": {f: [[n, u, round(r, 3)] for n, u, r in units] for f, units in correlations(tr).items()},
    }


def render(data: dict) -> str:
    """The page with the data embedded: JSON with <, > and & escaped, so no text can end the script."""
    blob = json.dumps(data, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = resources.files("charrnn").joinpath("viz_page.html").read_text(encoding="utf-8")
    return template.replace("/*CHARRNN_DATA*/", blob, 1)


def write_page(lm: LanguageModel, text: str, out: Path) -> Trace:
    """Trace the model over `text` and write the page to `out` atomically."""
    tr = trace(lm, text)
    html = render(page_data(lm, tr)).encode("utf-8")
    atomic_write(out, lambda f: f.write(html))
    return tr
