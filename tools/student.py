"""Write the student edition of the notebooks: every exercise cell (tag "exercise") keeps its statement, signature,
docstring and check, but the lines between `# BEGIN SOLUTION` and `# END SOLUTION` become one
`raise NotImplementedError(...)`, and its outputs are cleared. Every other cell is copied as it is.

    python tools/student.py                 # notebooks/ -> build/student/   (`make student`)
    python tools/student.py SRC_DIR OUT_DIR

The notebooks in notebooks/ are the one source of truth (they hold the solutions); never edit the student edition.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


def strip_solution(source: str) -> str:
    """The cell's source with each solution block replaced by a stub at the block's indentation."""
    out, inside = [], False
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested # BEGIN SOLUTION")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("your answer here: replace this line")\n')
        elif stripped == END:
            if not inside:
                raise ValueError("# END SOLUTION without # BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("# BEGIN SOLUTION without # END SOLUTION")
    return "".join(out)


def student_notebook(nb: dict) -> dict:
    """A copy of notebook JSON `nb` with the exercise cells stubbed and cleared."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if "exercise" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = strip_solution("".join(cell["source"])).splitlines(keepends=True)
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def build(src: Path, out: Path) -> list[Path]:
    """Student editions of src/0*.ipynb written to out/; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(src).glob("0*.ipynb")):
        nb = student_notebook(json.loads(path.read_text()))
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(
        prog="python tools/student.py",
        description="Write the student edition of the notebooks: exercise solutions stubbed, their outputs cleared.",
    )
    parser.add_argument(
        "src", nargs="?", type=Path, default=root / "notebooks", help="notebooks to read (default: notebooks/)"
    )
    parser.add_argument(
        "out",
        nargs="?",
        type=Path,
        default=root / "build" / "student",
        help="folder to write (default: build/student/)",
    )
    args = parser.parse_args(argv)
    if not args.src.is_dir() or not any(args.src.glob("0*.ipynb")):
        parser.error(f"{args.src} holds no notebooks (0*.ipynb); expected the series' folder, e.g. notebooks/")
    if args.out.resolve() == args.src.resolve():
        parser.error(
            f"the output folder {args.out} is the source folder: the student edition would replace the solutions"
        )
    paths = build(args.src, args.out)
    n = sum(
        "exercise" in c.get("metadata", {}).get("tags", []) for p in paths for c in json.loads(p.read_text())["cells"]
    )
    print(f"student edition: {len(paths)} notebooks, {n} exercises stubbed -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
