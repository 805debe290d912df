"""Execute notebooks top to bottom in place (the committed outputs are this run), then clean them.

    python tools/run_notebooks.py notebooks/02_global_hidden_positives.ipynb [more.ipynb ...]

    python tools/run_notebooks.py --warm notebooks/0*.ipynb     # `make warm`: run them, keep nothing but the caches

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

TIMES = Path(__file__).resolve().parents[1] / "docs" / "notebook_times.json"


def section_times(nb) -> dict[str, float]:
    """Seconds spent in each H2 section ("(setup)" before the first), from nbclient's per-cell timestamps."""
    from datetime import datetime

    times, section = {}, "(setup)"
    for cell in nb.cells:
        if cell.cell_type == "markdown":  # the last H2 heading of the cell, wherever it stands in it
            headings = [line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")]
            section = headings[-1] if headings else section
        stamps = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "shell.execute_reply" in stamps:
            t0 = datetime.fromisoformat(stamps["iopub.execute_input"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(stamps["shell.execute_reply"].replace("Z", "+00:00"))
            times[section] = times.get(section, 0.0) + (t1 - t0).total_seconds()
    return {k: round(v, 1) for k, v in times.items()}


def run(path: Path, timeout: int = 1200, warm: bool = False) -> float:
    """Execute one notebook in place and clean it; record its section times in docs/notebook_times.json; returns
    the wall time in seconds. `warm`: execute only, for what the run leaves behind (the converted backbone, feature
    caches, trained runs): the notebook and the times file are not written."""
    import os

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    seconds = time.perf_counter() - start
    if warm:
        return seconds
    record = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    record[path.name] = {
        "total_s": round(seconds, 1),
        "threads": os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} cores)"),
        "sections_s": section_times(nb),
    }
    TIMES.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    path.write_text(dumps(clean(json.loads(nbformat.writes(nb)))))
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    p.add_argument("--warm", action="store_true", help="execute only: write neither the notebooks nor their times")
    args = p.parse_args(argv)
    for path in args.paths:
        print(f"{path.name}: {run(path, args.timeout, args.warm):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
