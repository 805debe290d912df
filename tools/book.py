"""Build the series as a static HTML site (Sphinx, myst-nb, sphinx-book-theme), offline, without running a notebook.

    python tools/book.py            # build/book/html/index.html   (`make book`)

The notebooks, docs/*.md and the README are the one source: they are copied (only when changed, so Sphinx re-reads
only what changed) into build/book-src/, beside docs/book/index.md and a glossary page cut from notebook 00, and
Sphinx reads that copy with docs/book/conf.py. Relative links between them keep working because the copy keeps the
repository's layout (notebooks/, docs/). Sphinx runs with -W --keep-going: any warning fails the build, after all of
them are listed. Nothing is written into notebooks/ or docs/: the copy, the doctrees and the site go to build/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "docs" / "book"
SRC = ROOT / "build" / "book-src"
OUT = ROOT / "build" / "book"
HTML = OUT / "html"
STAMP = HTML / ".built"  # written after a build without warnings; tests compare its time with the sources'
GLOSSARY_HEADING = "## Glossary"


def sources() -> dict[str, Path]:
    """The site's pages: their path under build/book-src/ -> the repository file they are copied from."""
    pages = {"index.md": CONF / "index.md", "README.md": ROOT / "README.md"}
    pages.update({f"notebooks/{p.name}": p for p in sorted((ROOT / "notebooks").glob("0*.ipynb"))})
    pages.update({f"docs/{p.name}": p for p in sorted((ROOT / "docs").glob("*.md"))})
    return pages


def jupyter_anchor(title: str) -> str:
    """JupyterLab's anchor of a heading: its text with spaces as '-' (case and punctuation kept)."""
    return title.strip().replace(" ", "-")


def glossary_notebook(tour: dict) -> dict:
    """The glossary page: the cells of notebook 00's glossary section (its H2 up to the next H2), outputs kept,
    under an H1 that links back to where the section lives."""
    heads = [
        i
        for i, c in enumerate(tour["cells"])
        if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## ")
    ]
    start = next((i for i in heads if "".join(tour["cells"][i]["source"]).startswith(GLOSSARY_HEADING)), None)
    if start is None:
        raise ValueError(
            f"notebook 00 has no section starting with {GLOSSARY_HEADING!r}: the book's glossary page is cut from it "
            "(tools/book.py, GLOSSARY_HEADING); rename the heading there or here"
        )
    end = next((i for i in heads if i > start), len(tour["cells"]))
    heading = "".join(tour["cells"][start]["source"]).splitlines()[0][3:]
    link = f"notebooks/00_setup_and_tour.ipynb#{jupyter_anchor(heading)}"
    intro = (
        "# Glossary\n\n"
        f"*The paper's symbols and `hpnb`'s names: the section of [notebook 00]({link}) that holds them, shown here "
        "on its own.*\n"
    )
    cells = [{"cell_type": "markdown", "id": "glossary-title", "metadata": {}, "source": intro}]
    return {**tour, "cells": cells + tour["cells"][start:end]}


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it already holds exactly that (keeps the time Sphinx compares)."""
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def sync(dest: Path = SRC) -> list[str]:
    """Copy the sources and the glossary page into `dest`, remove what is no longer a source; returns what changed."""
    wanted = {name: path.read_bytes() for name, path in sources().items()}
    tour = json.loads(wanted["notebooks/00_setup_and_tour.ipynb"])
    wanted["glossary.ipynb"] = (json.dumps(glossary_notebook(tour), indent=1, ensure_ascii=False) + "\n").encode()
    changed = [name for name, data in wanted.items() if write_if_changed(dest / name, data)]
    for path in sorted(dest.rglob("*")):
        if path.is_file() and path.relative_to(dest).as_posix() not in wanted:
            path.unlink()
            changed.append(f"{path.relative_to(dest).as_posix()} (removed)")
    return changed


def inputs() -> list[Path]:
    """Every file the site is made from: the sources, the configuration and this script."""
    return [*sources().values(), CONF / "conf.py", Path(__file__).resolve()]


def is_stale() -> bool:
    """True when the last build failed or never ran, or a source changed after it (the tests build it then)."""
    return not STAMP.is_file() or STAMP.stat().st_mtime < max(p.stat().st_mtime for p in inputs())


def pages(html: Path = HTML) -> list[Path]:
    """The site's HTML pages, Sphinx's search and index pages left out."""
    skip = {"search.html", "genindex.html"}
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and p.name not in skip)


def build(quiet: bool = False) -> int:
    """Sync the sources, run Sphinx (warnings are errors), print the time and the page count; Sphinx's exit code."""
    start = time.perf_counter()
    sync()
    STAMP.unlink(missing_ok=True)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(CONF), "-d", str(OUT / "doctrees")]
    command += ["-W", "--keep-going", "-j", "1"] + (["-q"] if quiet else []) + [str(SRC), str(HTML)]
    code = subprocess.run(command, cwd=ROOT).returncode
    seconds = time.perf_counter() - start
    if code == 0:
        STAMP.write_text(f"{seconds:.1f}\n")
    status = "built" if code == 0 else f"FAILED (sphinx-build exit {code}; its warnings name build/book-src/X for X)"
    print(f"book {status}: {len(pages())} pages in {seconds:.0f} s -> {(HTML / 'index.html').relative_to(ROOT)}")
    return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python tools/book.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="only Sphinx's warnings and the summary line")
    return build(quiet=parser.parse_args(argv).quiet)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
