"""Choose dynamic evaluation's defaults on validation text, never on the text they are judged on.

    python benchmarks/dynamic_tune.py -m RUN --text VALIDATION.txt [--chars 40000]
        [--rule rms,sgd] [--lr 3e-5,1e-4,3e-4] [--decay 0,1e-3,1e-2] [--segment 50]

For every combination, `LanguageModel.evaluate_dynamic` on the first --chars characters of
--text: one JSON line each (static and dynamic loss, chars/s), then the best line again with
"best": true. RESULTS.md ("Dynamic evaluation") shows how the defaults were picked with it: a
model trained on the first 80% of tinyshakespeare, tuned on the next 10% (its validation
text), the defaults then measured on the last 10% with models that never saw it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import charrnn
from charrnn import DynamicSettings


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--chars", type=int, default=40_000)
    parser.add_argument("--rule", default="rms")
    parser.add_argument("--lr", type=_floats, default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--decay", type=_floats, default=[0.0, 1e-3, 1e-2])
    parser.add_argument("--segment", default="50")
    opts = parser.parse_args()
    lm = charrnn.load(opts.model)
    with open(opts.text, encoding="utf-8") as f:
        text = f.read()[: opts.chars]
    segments = [int(s) for s in opts.segment.split(",")]
    best = None
    for rule, lr, decay, segment in itertools.product(opts.rule.split(","), opts.lr, opts.decay, segments):
        started = time.perf_counter()
        result = lm.evaluate_dynamic(text, DynamicSettings(rule, lr, decay, segment))
        line = {
            "rule": rule,
            "lr": lr,
            "decay": decay,
            "segment": segment,
            "static": round(result.static.loss, 4),
            "dynamic": round(result.dynamic.loss, 4),
            "chars_per_sec": round(result.dynamic.chars / (time.perf_counter() - started)),
        }
        print(json.dumps(line), flush=True)
        if best is None or line["dynamic"] < best["dynamic"]:
            best = line
    print(json.dumps({**best, "best": True}))


if __name__ == "__main__":
    main()
