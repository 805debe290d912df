"""Every "Try it yourself" prompt of the notebooks is tested as written: `make test`'s nbval run (with
--student-and-prompts, ./conftest.py) applies each prompt's change to a copy of its cell in the notebook's own kernel
after the notebook has run, re-runs from the changed cell to the end of that cell's section (then the prompt's new
cell, if any; a prompt that only adds a cell runs that cell), and fails on any error or when the promised text is
missing. The prompts and
the plan of each re-run live in tests/notebook_session.py; these tests check that plan and that each prompt's text
still shows the change that is applied:
    pytest --nbval --nbval-current-env --student-and-prompts notebooks/01_preliminaries.ipynb   # one notebook
"""

from __future__ import annotations

import ast
import json

import pytest
from notebook_session import NOTEBOOKS, PROMPTS, _heading, _notebook, _text, _try_it_yourself, prompt_cells, prompt_id


def test_every_prompt_of_every_notebook_is_tested():
    """Each numbered prompt of each notebook has at least one entry above (a new prompt needs its test)."""
    import re

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        numbers = {int(n) for n in re.findall(r"^(\d+)\. ", _try_it_yourself(cells), flags=re.M)}
        tested = {p.number for p in PROMPTS if path.name.startswith(p.notebook)}
        assert numbers == tested, f"{path.name}: prompts {sorted(numbers)}, tested {sorted(tested)}"


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"{p.notebook}-{p.number}-{p.mentions[:24]}")
def test_prompt_text_shows_the_change_the_test_applies(prompt):
    cells = json.loads(_notebook(prompt.notebook).read_text())["cells"]
    assert prompt.mentions in _try_it_yourself(cells)
    if prompt.replace:
        hits = [c for c in cells if c["cell_type"] == "code" and prompt.replace[0] in _text(c)]
        assert len(hits) == 1, f"{prompt.replace[0]!r} is in {len(hits)} code cells, expected exactly one"


@pytest.mark.parametrize("prompt", PROMPTS, ids=prompt_id)
def test_a_prompt_reruns_from_its_changed_cell_to_the_end_of_its_section(prompt):
    cells = json.loads(_notebook(prompt.notebook).read_text())["cells"]
    start, rerun = prompt_cells(cells, prompt)
    headings = [i for i, c in enumerate(cells) if _heading(c, "## ")]
    if prompt.through is None:
        end = next(i for i in headings if _heading(cells[i], "## Summary"))
    else:
        section = next(i for i in headings if _heading(cells[i], prompt.through))
        end = next((i for i in headings if i > section), len(cells))
    assert start + len(rerun) - bool(prompt.code) == end
    if prompt.replace:
        assert prompt.replace[0] in _text(cells[start]) and prompt.replace[1] in rerun[0]["source"]
    else:  # a new cell only: just that cell, where the prompt puts it
        assert start == end and [c["source"] for c in rerun] == [prompt.code]


def _bound_and_read(source: str) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """(names a cell binds at top level, names it reads, {function it defines: the names that function reads})."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    bound, read, functions = set(), set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
            local = {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
            local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            functions[node.name] = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - local  # its globals
            continue
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                (bound if isinstance(n.ctx, ast.Store) else read).add(n.id)
            elif isinstance(n, ast.alias):
                bound.add((n.asname or n.name).split(".")[0])
    return bound, read, functions


@pytest.mark.parametrize("prompt", [p for p in PROMPTS if not p.replace], ids=prompt_id)
def test_a_new_cell_run_after_the_notebook_sees_what_it_would_see_where_the_prompt_puts_it(prompt):
    """A prompt that only adds a cell runs that cell once the notebook has run (no re-run). That is the state at the
    place the prompt names as long as no later cell rebinds a name the new cell reads, directly or through a
    function the notebook defines: checked here for every such prompt."""
    cells = json.loads(_notebook(prompt.notebook).read_text())["cells"]
    place, _ = prompt_cells(cells, prompt)
    functions, later = {}, set()
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            bound, _, defined = _bound_and_read(_text(cell))
            functions.update(defined)
            if i >= place:
                later |= bound
    _, needed, _ = _bound_and_read(prompt.code)
    todo = list(needed)
    while todo:  # the globals of the notebook's functions that the new cell calls, and of those they call
        for name in functions.get(todo.pop(), ()):
            if name not in needed:
                needed.add(name)
                todo.append(name)
    own, _, _ = _bound_and_read(prompt.code)
    rebound = sorted((needed - own) & later)
    assert not rebound, f"cells after the place of {prompt_id(prompt)!r} rebind {rebound}: re-run its section first"


@pytest.mark.slow
def test_a_kernel_that_dies_is_reported_with_its_exit_status(tmp_path):
    """A session whose kernel exits mid-notebook reports the death and the exit status (a kill by the OOM killer
    shows as -9) instead of hanging or taking later notebooks down with it; its prompts are marked not run."""
    from notebook_session import Prompt, run_session

    cells = [
        {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None},
        {
            "cell_type": "code",
            "metadata": {},
            "source": "import os\nos._exit(7)",
            "outputs": [],
            "execution_count": None,
        },
        {"cell_type": "markdown", "metadata": {}, "source": "## 1. Next"},
        {"cell_type": "code", "metadata": {}, "source": "print(x)", "outputs": [], "execution_count": None},
    ]
    for k, cell in enumerate(cells):
        cell["id"] = f"cell{k}"
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99_dies.ipynb"
    path.write_text(json.dumps(nb))
    report = run_session("99", path=path, prompts=[Prompt("99", 1, "x", "## 1.", code="print(x + 1)")])
    assert report["kernel"]["died"] and report["kernel"]["returncode"] == 7, report["kernel"]
    assert "Kernel died" in report["student"]["error"] or "DeadKernel" in report["student"]["error"]
    assert report["prompts"]["99-1-x"]["skipped"].startswith("not run")
