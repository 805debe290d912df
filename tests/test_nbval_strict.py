"""The notebook check is strict: outputs are printed at the precision the science supports, so they reproduce on other
CPUs and thread counts (tests/test_features.py proves the caches are bit-identical), yet a real change still fails
`pytest --nbval`. Here a temporary copy of notebook 02 gets three committed outputs changed the way a real regression
would change them, and nbval must fail on exactly those three cells and pass every other one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpnb.printing import count

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = next((ROOT / "notebooks").glob("02_*.ipynb"))


def _stdout(cell: dict) -> str:
    return "".join("".join(o["text"]) for o in cell["outputs"] if o.get("name") == "stdout")


def _set_stdout(cell: dict, text: str) -> None:
    (out,) = [o for o in cell["outputs"] if o.get("name") == "stdout"]
    out["text"] = text.splitlines(keepends=True)


def _code_index(cells: list[dict], needle: str) -> int:
    """Index among the code cells (nbval's "Cell N") of the one code cell whose source contains `needle`."""
    code = [c for c in cells if c["cell_type"] == "code"]
    (hit,) = [i for i, c in enumerate(code) if needle in "".join(c["source"])]
    return hit


def perturbed_copy(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A copy of notebook 02 with three committed outputs changed; returns it and {nbval cell number: what changed}."""
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    changed = {}

    # 1. a metric that moves by 0.5 points: the purity of the M = 64 row of the pool-size sweep
    i = _code_index(nb["cells"], "pool_rows = sweep(")
    lines = _stdout(code[i]).splitlines(keepends=True)
    row = next(k for k, line in enumerate(lines) if line.split()[:1] == ["64"])
    purity = re.findall(r"(\d+\.\d) ± ", lines[row])[-1]
    head, _, tail = lines[row].rpartition(f"{purity} ± ")  # the last column
    lines[row] = f"{head}{float(purity) + 0.5:.1f} ± {tail}"
    _set_stdout(code[i], "".join(lines))
    changed[i] = f"purity {purity} -> {float(purity) + 0.5:.1f}"

    # 2. a count of positives that moves by 2 %: the one-sided |P_i| of section 3
    i = _code_index(nb["cells"], "mutual = (one_sided & one_sided.T)")
    text = _stdout(code[i])
    old = re.search(r"one-sided (\S+)", text).group(1)
    new = count(float(old) * 1.02)
    _set_stdout(code[i], text.replace(f"one-sided {old}", f"one-sided {new}", 1))
    changed[i] = f"one-sided |P_i| {old} -> {new}"

    # 3. a changed table: the τ table loses its last row
    i = _code_index(nb["cells"], "tau_rows = sweep(")
    lines = _stdout(code[i]).splitlines(keepends=True)
    _set_stdout(code[i], "".join(lines[:-1]))
    changed[i] = "τ table without its last row"

    path = tmp_path / NOTEBOOK.name
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path, changed


@pytest.mark.slow
@pytest.mark.after_notebooks
def test_nbval_fails_on_exactly_the_perturbed_outputs(tmp_path):
    path, changed = perturbed_copy(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(ROOT / "notebooks" / "sanitize.cfg"),
            "--nbval-cell-timeout",
            "300",
            "-o",
            "addopts=",
            "--rootdir",
            str(tmp_path),
            str(path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    failed = sorted(int(n) for n in re.findall(r"FAILED \S+::Cell (\d+)", out.stdout))
    assert failed == sorted(changed), (
        f"expected nbval to fail on {changed}, it failed on {failed}:\n{out.stdout[-3000:]}"
    )
    assert re.search(r"\b3 failed, \d+ passed", out.stdout), out.stdout[-2000:]
