"""Estimated teaching time of each notebook section (reading, running and looking, exercises, widgets, Try-it
prompts, quizzes, discussion; not the machine's run time), and the workshop schedules built from them. Writes the
block between `<!-- teaching -->` and `<!-- /teaching -->` in docs/workshop.md; `--check` only compares.

    python tools/teaching_times.py            # rewrite the block
    python tools/teaching_times.py --check    # exit 1 when the block is not what the notebooks give now

The estimate is a model with its rates in plain sight (RATES), not a measured classroom time: adjust the rates to
your group and re-run. The one outside figure it was checked against is a facilitator's dry run of the full day
(7-7.5 h).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "workshop.md"
BEGIN, END = "<!-- teaching -->", "<!-- /teaching -->"

RATES = {
    "reading, words per minute (technical text with equations, read carefully)": 120,
    "minutes per code cell (read it, run it, look at the output)": 0.75,
    "minutes per exercise": 12,
    "minutes per exercise on the method's core (phi_code_form, lhp_weights, mix_codes)": 25,
    "minutes per widget (move the sliders, say what changed)": 5,
    "minutes per Try-it prompt (edit, re-run, compare)": 5,
    "minutes per quiz question (in pairs, then the answer)": 2,
}
CORE = ("phi_code_form", "lhp_weights", "mix_codes")
# sections that carry a guided discussion (docs/workshop.md, facilitator notes), minutes
DISCUSSION = {
    ("05", "8."): 20,  # HP beside the raw features under the same protocol: what may be claimed
    ("06", "3."): 15,  # seeds and protocols: the spread before the claim
}
WPM, CELL, EX, CORE_EX, WIDGET, PROMPT, QUESTION = RATES.values()


def sections(path: Path) -> list[dict]:
    """The notebook's H2 sections (the part before the first is "(intro)"), each with what it holds."""
    out = [{"title": "(intro)", "words": 0, "cells": 0, "exercises": 0, "core": 0, "widgets": 0, "items": 0}]
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":  # a cell may hold several sections: split it at its H2 headings
            text = re.sub(r"<!-- times -->.*?<!-- /times -->", "", text, flags=re.S)  # the table these times fill
            for k, chunk in enumerate(re.split(r"^(?=## )", text, flags=re.M)):
                if chunk.startswith("## "):
                    out.append({**dict.fromkeys(out[0], 0), "title": chunk.splitlines()[0][3:].strip()})
                elif k and not chunk:
                    continue
                body = re.sub(r"<details>.*?</details>", "", chunk, flags=re.S)  # quiz answers: read in the quiz slot
                out[-1]["words"] += len(re.findall(r"[A-Za-z]{2,}", body))
                out[-1]["items"] += len(re.findall(r"^\d+\. ", body, flags=re.M))  # prompts or quiz questions
        elif "exercise" in cell.get("metadata", {}).get("tags", []):
            out[-1]["exercises"] += 1
            out[-1]["core"] += any(f'check("{name}"' in text for name in CORE)
        else:
            out[-1]["cells"] += 1
            out[-1]["widgets"] += "hpnb.widgets.explore_" in text or "ipywidgets" in text
    return [s for s in out if s["title"] != "(intro)" or s["words"] or s["cells"]]


def minutes(section: dict, notebook: str) -> float:
    title = section["title"]
    if title == "References":
        return 1.0
    if title == "Quiz":
        return section["items"] * QUESTION
    t = section["words"] / WPM + section["cells"] * CELL + section["widgets"] * WIDGET
    t += (section["exercises"] - section["core"]) * EX + section["core"] * CORE_EX
    if title == "Try it yourself":
        t += section["items"] * PROMPT
    t += sum(m for (nb, prefix), m in DISCUSSION.items() if nb == notebook and title.startswith(prefix))
    return t


def estimate() -> dict[str, list[tuple[str, int]]]:
    """{notebook stem: [(section title, whole minutes), ...]} for every notebook of the series."""
    out = {}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        out[path.stem] = [(s["title"], max(1, round(minutes(s, path.name[:2])))) for s in sections(path)]
    return out


def _hm(m: int) -> str:
    return f"{m // 60} h {m % 60:02d}" if m >= 60 else f"{m} min"


# The schedules: what each slot covers (a whole notebook, or a notebook without some sections) and the breaks.
SCHEDULES = {
    "Two days, day 1 (the method)": ["00", "01", "break", "02", "lunch", "03"],
    "Two days, day 2 (training and what it shows)": ["04", "break", "05", "lunch", "06", "break", "wrap-up"],
    "Optional, a third slot (bring your own images)": ["07"],
    "One day (GHP, LHP and the objective; no training run)": [
        "00 -Try -Quiz",
        "01 -5. -6. -Try",
        "break",
        "02 -4. -6. -7. -Try",
        "lunch",
        "03 -4. -5. -Try",
        "break",
        "04 -6. -7. -Try",
    ],
    "Half day (GHP and LHP only)": [
        "00 -Try -Quiz -Datasets -Backbones",
        "01 -3. -4. -5. -6. -Try -Quiz",
        "break",
        "02 -4. -5. -6. -7. -Try",
        "03 -2. -4. -5. -Try -Quiz",
    ],
}
BREAKS = {"break": 15, "lunch": 60, "wrap-up": 20}


def slot(item: str, est: dict) -> tuple[str, int]:
    """(label, minutes) of one schedule item: "02" a whole notebook, "02 -4. -Try" one without the sections that
    start with those prefixes, or a break."""
    if item in BREAKS:
        return item, BREAKS[item]
    nb, *skip = item.split(" -")
    stem = next(s for s in est if s.startswith(nb))
    kept = [(t, m) for t, m in est[stem] if not any(t.startswith(p) for p in skip)]
    label = stem + (f" without {', '.join('§' + p.rstrip('.') for p in skip)}" if skip else "")
    return label, sum(m for _, m in kept)


def render() -> str:
    est = estimate()
    lines = [BEGIN, "", "| notebook | teaching time | by section (minutes) |", "|---|---:|---|"]
    for stem, parts in est.items():
        detail = " · ".join(f"{t.split(' ')[0] if t[0].isdigit() else t} {m}" for t, m in parts)
        lines.append(f"| {stem} | {_hm(sum(m for _, m in parts))} | {detail} |")
    lines += ["", "Rates of the estimate (`tools/teaching_times.py`, RATES):", ""]
    lines += [f"- {k}: {v}" for k, v in RATES.items()]
    lines += [f"- a guided discussion: {', '.join(f'{nb} §{p} {m} min' for (nb, p), m in DISCUSSION.items())}", ""]
    for name, items in SCHEDULES.items():
        slots = [slot(i, est) for i in items]
        total = sum(m for _, m in slots)
        teaching = sum(m for label, m in slots if label not in BREAKS)
        lines.append(
            f"**{name}: {_hm(total)}** ({_hm(teaching)} of teaching). "
            + " · ".join(f"{label} ({m} min)" for label, m in slots)
        )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare the block with the notebooks; write nothing")
    args = p.parse_args(argv)
    guide = GUIDE.read_text()
    if BEGIN not in guide or END not in guide:
        print(f"{GUIDE}: no {BEGIN} … {END} block to fill", file=sys.stderr)
        return 1
    new = guide[: guide.index(BEGIN)] + render() + guide[guide.index(END) + len(END) :]
    if args.check:
        if new != guide:
            print("docs/workshop.md's teaching times are stale: run python tools/teaching_times.py", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(new)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
