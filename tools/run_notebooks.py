"""Execute notebooks top to bottom in place (the committed outputs are this run), then clean them.

    python tools/run_notebooks.py notebooks/02_global_hidden_positives.ipynb [more.ipynb ...]

Runs each notebook in a fresh kernel of the current environment with its folder as the working directory, as
`pytest --nbval` does, and stops at the first error. Progress bars are off inside the notebooks (progress=False),
so no stderr noise lands in the committed outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clean_notebooks import clean, dumps  # noqa: E402


def run(path: Path, timeout: int = 1200) -> float:
    """Execute one notebook in place and clean it; returns the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    seconds = time.perf_counter() - start
    path.write_text(dumps(clean(json.loads(nbformat.writes(nb)))))
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = p.parse_args(argv)
    for path in args.paths:
        print(f"{path.name}: {run(path, args.timeout):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
