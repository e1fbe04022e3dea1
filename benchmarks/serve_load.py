"""`charrnn serve` under load: 32 clients at once against one, and the latency of one request.

    python benchmarks/serve_load.py [--clients 32] [--chars 150] [--rounds 3]

Trains the default model (GRU 2x256) for a few steps on tinyshakespeare (its quality does not
matter here, its size does), starts `charrnn serve` on it, then measures, with the official
`openai` client from threads: the wall time of one request of `--chars` characters; of
`--clients` such requests sent at once (each its own seed); and for one request of 200
characters, the time to its first character when streamed and its whole time when not.
Medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
CHARRNN = [sys.executable, "-m", "charrnn"]


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """`charrnn serve` on `run` with its defaults, once its model has loaded; and its address."""
    server = subprocess.Popen([*CHARRNN, "serve", "-m", str(run), "--port", "0"], stderr=subprocess.PIPE, text=True)
    address = server.stderr.readline().rsplit(" on ", 1)[1].strip()
    while httpx.get(f"{address}/health").status_code != 200:  # the model loads in the background
        time.sleep(0.05)
    return server, address


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--chars", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([*CHARRNN, "train", str(CORPUS), "-o", str(run), "--steps", "20", "-q"], check=True)
        server, address = start_server(run)
        client = openai.OpenAI(api_key="-", base_url=f"{address}/v1", max_retries=0)

        def complete(seed: int, chars: int = opts.chars) -> float:
            start = time.perf_counter()
            client.completions.create(model="run", prompt="ROMEO:", max_tokens=chars, seed=seed)
            return time.perf_counter() - start

        def first_char(seed: int) -> float:
            start = time.perf_counter()
            for _ in client.completions.create(model="run", prompt="ROMEO:", max_tokens=200, seed=seed, stream=True):
                return time.perf_counter() - start
            raise AssertionError("no event")

        complete(0)  # warm-up
        one, many, ttfc, whole = [], [], [], []
        with ThreadPoolExecutor(opts.clients) as pool:
            for r in range(opts.rounds):
                one.append(complete(r))
                start = time.perf_counter()
                list(pool.map(complete, range(100 * r, 100 * r + opts.clients)))
                many.append(time.perf_counter() - start)
                ttfc.append(first_char(r))
                whole.append(complete(r, 200))
        server.terminate()
        server.wait()
    ratio = statistics.median(m / o for m, o in zip(many, one, strict=True))
    print(
        f"| 1 request of {opts.chars} chars | {opts.clients} at once | ratio | 200 chars: first char streamed | whole |"
    )
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| {statistics.median(one) * 1000:.0f} ms | {statistics.median(many) * 1000:.0f} ms | **{ratio:.2f}** | "
        f"{statistics.median(ttfc) * 1000:.1f} ms | {statistics.median(whole) * 1000:.0f} ms |"
    )


if __name__ == "__main__":
    main()
