"""Peak memory of writing one huge record's `score` line, without scoring it.

    python benchmarks/output_memory.py [--mib 200]

Writes a single line of tinyshakespeare's text (newlines turned into spaces) of the given size,
reads it back as `charrnn score` does (a `LongText` past 4 Mi characters) and writes its TSV
line to /dev/null through the command line's `Stdout`; prints this process's
peak RSS before and after the writing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"


def child(path: Path) -> None:
    from charrnn.cli import Stdout
    from charrnn.data import Source, source_records
    from charrnn.score import RecordScore

    ((record, _),) = list(source_records([Source(str(path), path=path)], "line"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = Stdout()
    out.write_all(RecordScore(record, 1.0, len(record)).tsv_pieces())
    out.flush()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{type(record).__name__} of {len(record):,} characters: peak RSS {before // 1024} MiB read, "
        f"{after // 1024} MiB written",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "line.txt"
        text = CORPUS.read_text(encoding="utf-8").replace("\n", " ")
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < opts.mib << 20:
                f.write(text)
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), sys.stdout.fileno())
        child(path)


if __name__ == "__main__":
    main()
