"""Write each notebook's section times into the table between `<!-- times -->` and `<!-- /times -->` in its first
cell: the estimated teaching time (tools/teaching_times.py) and the measured run time (docs/notebook_times.json,
recorded by tools/run_notebooks.py). Markdown only: outputs are untouched.

    python tools/section_times.py
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clean_notebooks import dumps  # noqa: E402
from teaching_times import _hm, estimate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "docs" / "notebook_times.json"


def rounded(seconds: float) -> str:
    """A time a student plans with: '< 5 s', '10 s' steps below a minute, then whole minutes."""
    if seconds < 5:
        return "< 5 s"
    if seconds < 60:
        return f"{10 * math.ceil(seconds / 10):.0f} s"
    return f"{math.ceil(seconds / 60):.0f} min"


def table(record: dict, teaching: list[tuple[str, int]]) -> str:
    """The section table: every section in the notebook's order, its teaching minutes and its run time ('–' for a
    section without code)."""
    run = {("(intro)" if k == "(setup)" else k): v for k, v in record["sections_s"].items()}
    rows = [
        f"| {title} | {minutes} min | {rounded(run[title]) if title in run else '–'} |" for title, minutes in teaching
    ]
    return "\n".join(
        [
            f"**Time per section**: teaching {_hm(sum(m for _, m in teaching))} in all (reading, exercises, prompts, "
            "quiz and discussion: an estimate, docs/workshop.md gives its rates), run time "
            f"{rounded(record['total_s'])} (measured on 2 CPU cores with the feature cache warm; the first run of "
            "the series also computes the cache).",
            "",
            "| section | teaching | run time |",
            "|---|---:|---:|",
            *rows,
        ]
    )


def main() -> int:
    record = json.loads(TIMES.read_text())
    teaching = estimate()
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        if path.name not in record:
            print(f"{path.name}: no measured times (run tools/run_notebooks.py on it)")
            continue
        nb = json.loads(path.read_text())
        head = "".join(nb["cells"][0]["source"])
        block = f"<!-- times -->\n{table(record[path.name], teaching[path.stem])}\n<!-- /times -->"
        new = re.sub(r"<!-- times -->.*<!-- /times -->", lambda _, b=block: b, head, flags=re.S)
        nb["cells"][0]["source"] = new.splitlines(keepends=True)
        path.write_text(dumps(nb))
        print(f"{path.name}: {len(record[path.name]['sections_s'])} sections, {record[path.name]['total_s']:.0f} s")
    workshop = ROOT / "docs" / "workshop.md"
    rows = [f"| {name[:-6]} | {rounded(r['total_s'])} | {len(r['sections_s'])} |" for name, r in sorted(record.items())]
    block = "\n".join(
        ["<!-- times -->", "| notebook | run time | sections |", "|---|---:|---:|", *rows, "<!-- /times -->"]
    )
    text = workshop.read_text()
    workshop.write_text(re.sub(r"<!-- times -->.*<!-- /times -->", lambda _: block, text, flags=re.S))
    print(f"{workshop.relative_to(ROOT)}: {len(rows)} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
