"""Every pytest run in this repository (the unit tests, nbval on the notebooks, the tests after the notebooks) ends
with one line: its peak memory and that of its largest child process (a kernel, a CLI run).

`--student-and-prompts` (what `make test` passes to its nbval run) adds to each notebook's nbval items, in that
notebook's kernel:
- right after each exercise cell, the cell as the student edition has it (tools/student.py: the solution stubbed),
  which must print "not implemented yet"; the stub stays bound from then on, so the rest of the notebook runs, and
  nbval compares its outputs, as in the student edition: the student edition runs top to bottom;
- after the notebook's last cell, each "Try it yourself" prompt (tests/notebook_session.py: PROMPTS) as a student
  tries it after a run: the prompt's change applied to a copy of its cell and the re-run from the changed cell to
  the end of its section, then the prompt's new cell if any (a prompt that only adds a cell: that cell, run in the
  state the notebook left); none may raise, and the outputs must show what the prompt promises. Prompts placed
  further down run first, so new cells see the state of the run as committed.
One kernel per notebook does all of it: no second run of any notebook.

`--nbval-progress DIR` (also in `make test`) touches DIR/<notebook>.ipynb once the last item of that notebook has run,
so the browser test, which `make test` starts beside nbval once the unit tests are done, opens each notebook only
when nbval has warmed its caches (tests/notebook_session.py: `wait_until_nbval_ran`).

`--nbval-strictness` (also in `make test`) adds one item after notebook 02's last cell: nbval's own comparison
(sanitised, as for every cell) of what each cell of 02 printed in this run against a copy of the committed outputs
with three of them changed the way a regression would change them (tests/test_nbval_strict.py: `perturb`) must fail
on exactly those three cells and pass on every other one. So the check that outputs are printed robustly, yet a real
change still fails, costs no second run of the notebook.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption(
        "--student-and-prompts",
        action="store_true",
        help="with --nbval: also run each notebook's exercise stubs and its Try-it-yourself prompts in its kernel",
    )
    parser.addoption(
        "--nbval-progress",
        metavar="DIR",
        help="with --nbval: touch DIR/<notebook> when the last item of that notebook has run (the browser test, "
        "started beside nbval by `make test`, waits for it)",
    )
    parser.addoption(
        "--nbval-strictness",
        action="store_true",
        help="with --nbval: check that nbval fails on exactly three perturbed outputs of notebook 02 (no second run)",
    )


class NbvalStrictness(pytest.Item):
    """nbval's comparison of this run's outputs of one notebook against its committed outputs with a few of them
    perturbed: must fail on exactly the perturbed cells."""

    def __init__(self, *, cells, **kwargs):
        super().__init__(**kwargs)
        self.cells = cells  # nbval's items of the notebook's code cells, in order

    def runtest(self):
        import nbformat
        from nbval.plugin import coalesce_streams
        from test_nbval_strict import perturb

        nb = json.loads(Path(str(self.fspath)).read_text())
        changed = perturb(nb)
        code = [
            c for c in nbformat.reads(json.dumps(nb), as_version=4).cells if c.cell_type == "code"
        ]  # as nbval reads
        compared, failed = 0, []
        for item in self.cells:
            if not item.options["check"] or item.cell.execution_count is None:
                continue  # nbval does not compare these either
            if not hasattr(item, "test_outputs"):
                raise AssertionError(f"Cell {item.cell_num} did not run before this check")
            ref = coalesce_streams(code[item.cell_num].outputs)
            compared += 1
            if not item.compare_outputs(item.test_outputs, ref):
                failed.append(item.cell_num)
        assert failed == sorted(changed), f"nbval should fail on {changed} and only there; it failed on {failed}"
        assert compared > 3 * len(changed), f"only {compared} cells were compared"

    def reportinfo(self):
        return self.fspath, 0, self.name


def pytest_collection_modifyitems(session, config, items):
    if config.getoption("--nbval-strictness"):
        add_strictness(items)
    if config.getoption("--student-and-prompts"):
        add_student_and_prompts(items)


def add_strictness(items):
    from nbval.plugin import IPyNbCell

    sys.path.insert(0, str(ROOT / "tests"))
    mine = [i for i in items if isinstance(i, IPyNbCell) and Path(str(i.parent.fspath)).name.startswith("02_")]
    if mine:
        at = items.index(mine[-1]) + 1
        items.insert(at, NbvalStrictness.from_parent(mine[-1].parent, name="nbval strictness", cells=mine))


def add_student_and_prompts(items):
    from nbval.plugin import IPyNbCell

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tools"))
    import notebook_session
    import student

    class CellsRun(IPyNbCell):
        """Cells run in the notebook's kernel (nbval's), outputs not compared; fails on an error, or when `expect`
        is missing from what they printed."""

        def __init__(self, *, cells, expect=None, skip_reason=None, **kwargs):
            super().__init__(**kwargs)
            self.cells, self.expect, self.skip_reason = cells, expect, skip_reason

        def runtest(self):
            if self.skip_reason:
                pytest.skip(self.skip_reason)
            printed = []
            for cell in self.cells:
                self.cell = cell
                IPyNbCell.runtest(self)  # raises on an error in the cell
                printed += self.test_outputs
            text = json.dumps(printed, ensure_ascii=False)
            if self.expect is not None and self.expect not in text:
                raise AssertionError(f"{self.expect!r} is not in what the cells printed: {text[:2000]}")

    def code_cell(source: str):
        import nbformat

        return nbformat.v4.new_code_cell(source)

    out, by_file = [], defaultdict(list)
    for item in items:
        if isinstance(item, IPyNbCell):
            by_file[item.parent].append(item)
    for item in items:
        out.append(item)
        if not isinstance(item, IPyNbCell) or isinstance(item, CellsRun):
            continue
        parent, cell = item.parent, item.cell
        if "exercise" in cell.metadata.get("tags", []):
            stub = student.strip_solution(cell.source)
            out.append(
                CellsRun.from_parent(
                    parent,
                    name=f"{item.name} as in the student edition",
                    cell_num=item.cell_num,
                    cell=cell,
                    options=defaultdict(bool),
                    cells=[code_cell(stub)],
                    expect="not implemented yet",
                )
            )
        if item is by_file[parent][-1]:  # the notebook's last cell: its prompts follow
            prefix = Path(str(parent.fspath)).name[:2]
            source = json.loads(Path(str(parent.fspath)).read_text())["cells"]
            mine = [p for p in notebook_session.PROMPTS if p.notebook == prefix]
            planned = sorted(((*notebook_session.prompt_cells(source, p), p) for p in mine), key=lambda x: -x[0])
            for start, cells, prompt in planned:
                out.append(
                    CellsRun.from_parent(
                        parent,
                        name=f"Prompt {notebook_session.prompt_id(prompt)}",
                        cell_num=start,
                        cell=item.cell,
                        options=defaultdict(bool),
                        cells=[code_cell(c["source"]) for c in cells if c["cell_type"] == "code"],
                        expect=prompt.expect,
                        skip_reason=notebook_session._needs_missing_data(prompt),
                    )
                )
    items[:] = out


PEAKS = {"pytest": (0, ""), "child": (0, "")}  # the highest peak RSS (KB) so far and the test during which it was set


def pytest_collection_finish(session):
    for key, who in (("pytest", resource.RUSAGE_SELF), ("child", resource.RUSAGE_CHILDREN)):
        PEAKS[key] = (resource.getrusage(who).ru_maxrss, "")  # what imports and collection took


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    progress = item.config.getoption("--nbval-progress")
    if (
        progress
        and str(item.parent.fspath).endswith(".ipynb")
        and (nextitem is None or nextitem.parent is not item.parent)
    ):
        Path(progress).mkdir(parents=True, exist_ok=True)  # the notebook's items are done: its caches and runs exist
        (Path(progress) / Path(str(item.parent.fspath)).name).touch()
    for key, who in (("pytest", resource.RUSAGE_SELF), ("child", resource.RUSAGE_CHILDREN)):
        rss = resource.getrusage(who).ru_maxrss  # never decreases: a rise happened during this test
        if rss > PEAKS[key][0]:
            PEAKS[key] = (rss, item.nodeid)


def pytest_terminal_summary(terminalreporter):
    (own, own_test), (child, child_test) = PEAKS["pytest"], PEAKS["child"]
    terminalreporter.write_line(
        f"peak RSS: pytest {own / 2**20:.1f} GB (reached in {own_test or 'collection'}), its largest child process "
        f"{child / 2**20:.1f} GB (reached in {child_test or 'collection'}; a child counts pytest's memory at its fork)"
    )
