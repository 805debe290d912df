"""Strip execution metadata from notebooks but keep their outputs (the committed outputs are the CPU run).

Cells tagged `live-only` lose their outputs too: they render data whose licence is not the project's (CamVid,
CC BY-NC) and show it only when a user runs the notebook with the data present; such pixels are never committed.

    python tools/clean_notebooks.py notebooks/*.ipynb          # clean in place
    python tools/clean_notebooks.py --check notebooks/*.ipynb  # exit 1 if any file would change (used by tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")
LIVE_ONLY = "live-only"


def clean(nb: dict) -> dict:
    """Notebook dict without timing/widget-state metadata; outputs and execution counts kept."""
    nb = json.loads(json.dumps(nb))
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in KEEP_NOTEBOOK_METADATA}
    if "language_info" in nb["metadata"]:
        nb["metadata"]["language_info"] = {"name": "python"}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        cell["metadata"] = {k: v for k, v in meta.items() if k == "tags" and v}
        if LIVE_ONLY in cell["metadata"].get("tags", []):
            cell["outputs"], cell["execution_count"] = [], None
        cell.pop("id", None) if nb.get("nbformat_minor", 0) < 5 else None
    return nb


def dumps(nb: dict) -> str:
    """The canonical text of a notebook file (what nbformat writes: indent 1, sorted keys, newline at the end)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("paths", nargs="+", type=Path)
    args = p.parse_args(argv)
    dirty = []
    for path in args.paths:
        text = path.read_text()
        new = dumps(clean(json.loads(text)))
        if new != text:
            dirty.append(str(path))
            if not args.check:
                path.write_text(new)
    if args.check and dirty:
        print("not clean (run python tools/clean_notebooks.py on them):", *dirty, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
