"""How `make test` runs its three pytest runs, two at a time: nbval marks each notebook done (`--nbval-progress`,
./conftest.py) and the browser test, run beside nbval, waits for the notebook it opens (`wait_until_nbval_ran`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from notebook_session import NBVAL_PROGRESS, wait_until_nbval_ran

ROOT = Path(__file__).resolve().parents[1]


def test_without_the_variable_nothing_waits(monkeypatch):
    monkeypatch.delenv(NBVAL_PROGRESS, raising=False)
    assert wait_until_nbval_ran("01_preliminaries.ipynb") == 0.0


@pytest.mark.parametrize("marker", ["01_x.ipynb", "finished"])
def test_the_wait_ends_when_nbval_marks_the_notebook_or_ends(monkeypatch, tmp_path, marker):
    monkeypatch.setenv(NBVAL_PROGRESS, str(tmp_path / "progress"))
    (tmp_path / "progress").mkdir()
    (tmp_path / "progress" / "00_other.ipynb").touch()  # another notebook's marker does not end the wait
    timer = threading.Timer(0.4, (tmp_path / "progress" / marker).touch)
    timer.start()
    waited = wait_until_nbval_ran("01_x.ipynb", poll_s=0.05, timeout_s=10)
    timer.join()
    assert 0.35 < waited < 5


def test_a_notebook_nbval_never_marks_is_an_error_after_the_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv(NBVAL_PROGRESS, str(tmp_path / "never-made"))
    with pytest.raises(TimeoutError, match="01_x.ipynb"):
        wait_until_nbval_ran("01_x.ipynb", poll_s=0.05, timeout_s=0.2)


def _notebook(path: Path, sources: list[str]) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s} for s in sources
    ]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_nbval_marks_each_notebook_once_its_last_cell_has_run(tmp_path):
    """Two tiny notebooks under nbval with ./conftest.py loaded: each marker appears, and the first notebook's marker
    is there before the second notebook's first cell runs (the cell looks for it)."""
    progress = tmp_path / "progress"
    _notebook(tmp_path / "a.ipynb", ["x = 1", "y = 2"])
    _notebook(tmp_path / "b.ipynb", [f"import pathlib\nassert pathlib.Path({str(progress / 'a.ipynb')!r}).exists()"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "--nbval-lax", "--nbval-current-env"]
        + ["--nbval-progress", str(progress), "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in progress.iterdir()) == ["a.ipynb", "b.ipynb"]
    assert (progress / "a.ipynb").stat().st_mtime <= (progress / "b.ipynb").stat().st_mtime


def test_make_test_marks_nbvals_end_whatever_its_status():
    """The browser test must not wait forever when nbval fails early: the recipe writes `finished` after nbval."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ntest: $(STAMP)") :].split("\n\n")[0]
    nbval_ends = recipe.index("nbval=$$?")
    assert recipe.index("touch $(PROGRESS)/finished") > nbval_ends
    assert "--nbval-progress $(PROGRESS)" in recipe and f"{NBVAL_PROGRESS}=$(PROGRESS)" in recipe
    assert recipe.index("rm -rf $(PROGRESS)") < recipe.index(") &")  # old markers go before anything starts


def test_the_after_notebooks_run_passes_with_a_skip_line_per_browser_test_when_chromium_is_missing(tmp_path):
    """Without Chromium the browser tests are skipped, not uncollected: pytest's exit 5 ("no tests ran") would fail
    `make test` on every machine without a browser. -rs folds the skips of one test function into one line: one line
    for the notebooks in JupyterLab, one for the book, each with the same install hint."""
    env = {**os.environ, "PATH": str(tmp_path)}  # no chromium on this PATH; pytest runs by the absolute interpreter
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-m",
            "after_notebooks",
            "tests/test_browser.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    hints = {line.split(": ", 1)[1] for line in skips}  # SKIPPED [n] file:line: reason
    assert len(skips) == 2 and len(hints) == 1 and "apt-get install chromium" in skips[0], done.stdout[-2000:]


def test_warm_runs_a_notebook_for_its_side_effects_and_writes_neither_it_nor_the_times(tmp_path):
    """`make warm` (tools/run_notebooks.py --warm): the cell runs (its file appears), the notebook and
    docs/notebook_times.json stay byte for byte as they were."""
    sys.path.insert(0, str(ROOT / "tools"))
    import run_notebooks

    made = tmp_path / "made-by-the-cell.txt"
    _notebook(tmp_path / "w.ipynb", [f"import pathlib\npathlib.Path({str(made)!r}).write_text('cached')"])
    before = (tmp_path / "w.ipynb").read_bytes()
    times = run_notebooks.TIMES.read_bytes() if run_notebooks.TIMES.is_file() else None
    assert run_notebooks.main(["--warm", str(tmp_path / "w.ipynb")]) == 0
    assert made.read_text() == "cached"
    assert (tmp_path / "w.ipynb").read_bytes() == before
    assert (run_notebooks.TIMES.read_bytes() if run_notebooks.TIMES.is_file() else None) == times
