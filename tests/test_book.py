"""The static site (`make book`, tools/book.py, docs/book/): its page list covers every notebook and every docs page,
the glossary page is notebook 00's glossary section, the sources are copied without touching the repository, and
`make test` builds it beside nbval. The site in a browser: tests/test_browser.py (after the notebooks)."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402  (tools/book.py)


def _toctree_entries() -> list[str]:
    """Every document the toctrees of docs/book/index.md name, in order."""
    text = (ROOT / "docs" / "book" / "index.md").read_text()
    entries = []
    for body in re.findall(r"```\{toctree\}\n(.*?)```", text, re.S):
        entries += [line.strip() for line in body.splitlines() if line.strip() and not line.startswith(":")]
    return entries


def test_the_book_lists_every_notebook_in_order_and_every_docs_page():
    entries = _toctree_entries()
    notebooks = [f"notebooks/{p.stem}" for p in sorted((ROOT / "notebooks").glob("0*.ipynb"))]
    docs = {f"docs/{p.stem}" for p in (ROOT / "docs").glob("*.md")}
    assert [e for e in entries if e.startswith("notebooks/")] == notebooks, "docs/book/index.md: list every notebook"
    assert {e for e in entries if e.startswith("docs/")} == docs, "docs/book/index.md: list every docs/*.md"
    assert {"README", "glossary"} <= set(entries) and len(entries) == len(set(entries))
    copied = {name.rsplit(".", 1)[0] for name in book.sources()} | {"glossary"}
    assert set(entries) | {"index"} == copied, "every page the book lists is copied, and every copied page listed"


def test_the_configuration_never_runs_a_notebook_and_serves_mathjax_itself():
    conf = runpy.run_path(str(ROOT / "docs" / "book" / "conf.py"))
    assert conf["nb_execution_mode"] == "off"
    assert "sphinx-mathjax-offline" in conf["extensions"] and "dollarmath" in conf["myst_enable_extensions"]
    assert not [k for k, v in conf.items() if "://" in repr(v)], "no setting may name a URL (a CDN)"


def test_the_glossary_page_is_notebook_00s_glossary_section():
    tour = json.loads((ROOT / "notebooks" / "00_setup_and_tour.ipynb").read_text())
    cells = book.glossary_notebook(tour)["cells"]
    sources = ["".join(c["source"]) for c in cells]
    assert sources[0].startswith("# Glossary\n") and sources[1].startswith("## Glossary")
    assert "| $M$ |" in sources[1] and "pool_size" in sources[1]
    assert not any(s.startswith("## ") for s in sources[2:]), "the page stops at the next section"
    assert all(c in tour["cells"] for c in cells[1:]), "the section's cells, outputs included, as they are"
    link = re.search(r"\]\(notebooks/00_setup_and_tour\.ipynb#([^)]+)\)", sources[0]).group(1)
    assert link == "Glossary:-paper-symbols-and-code-names"  # the anchor the notebooks link to (JupyterLab's)


def test_the_anchor_is_jupyterlabs():
    assert book.jupyter_anchor(" Glossary: paper symbols and code names ") == "Glossary:-paper-symbols-and-code-names"


def test_sync_copies_only_what_changed_and_removes_what_is_no_longer_a_source(tmp_path):
    first = book.sync(tmp_path)
    assert set(first) == set(book.sources()) | {"glossary.ipynb"}
    assert (tmp_path / "notebooks" / "00_setup_and_tour.ipynb").read_bytes() == (
        ROOT / "notebooks" / "00_setup_and_tour.ipynb"
    ).read_bytes()
    (tmp_path / "notebooks" / "09_gone.ipynb").write_text("{}")
    assert book.sync(tmp_path) == ["notebooks/09_gone.ipynb (removed)"]
    assert book.sync(tmp_path) == []


def test_the_build_writes_only_under_build():
    for path in (book.SRC, book.OUT, book.HTML, book.STAMP):
        assert path.is_relative_to(ROOT / "build"), path
    assert "build" in (ROOT / ".gitignore").read_text().split()


def test_make_test_builds_the_book_between_the_unit_tests_and_the_tests_after_the_notebooks():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^book: \$\(STAMP\)\n\t\$\(PY\) tools/book\.py$", makefile, re.M)
    assert re.search(r"^\.PHONY:.* book( |$)", makefile, re.M)
    recipe = makefile[makefile.index("\ntest: $(STAMP)") :].split("\n\n")[0]
    unit, built, after = (recipe.index(s) for s in ("build/unit_tests.rc", "build/book.rc", "-m after_notebooks"))
    assert unit < built < after, "the book is built after the unit tests, before the browser checks it"
    assert "tools/book.py -q >build/book.log 2>&1" in recipe and "cat build/book.log" in recipe
    assert "test $$book = 0" in recipe
