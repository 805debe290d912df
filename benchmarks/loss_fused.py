"""The fused code-form loss against the reference path, same machine, same run (issue 14): for each batch size,
`loss_step.py` once per path, each in its own process so that each peak memory is its own.

    python benchmarks/loss_fused.py --batch 2 4 8 [--paths off on] [--repeats 3] [--device cuda] > results.txt

Prints every raw `loss_step.py` output, then a Markdown table: ms (median forward + backward), peak memory, and
the fused/reference ratios. The loss values of the two paths are printed too: they must agree (the same inputs).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

STEP = Path(__file__).with_name("loss_step.py")


def measure(batch: int, path: str, repeats: int, extra: list[str]) -> dict:
    """One loss_step.py run: its two output lines, the loss, ms and peak memory (MiB or GiB as printed)."""
    cmd = [sys.executable, str(STEP), "--batch", str(batch), "--fused", path, "--repeats", str(repeats), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(out, end="", flush=True)
    loss = float(re.search(r"loss (\S+)", out).group(1))
    ms = float(re.search(r"median (\d+) ms", out).group(1))
    rss = re.search(r"\+(\d+) MiB above the inputs", out)
    gib = re.search(r"peak (\S+) GiB", out)
    peak, unit = (float(rss.group(1)), "MiB") if rss else (float(gib.group(1)), "GiB")
    return dict(loss=loss, ms=ms, peak=peak, unit=unit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--paths", nargs=2, default=["off", "on"], help="reference path, fused path")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more loss_step.py arguments after --, e.g. -- --device cuda")
    args = p.parse_args()
    ref_path, new_path = args.paths
    rows = []
    for b in args.batch:
        ref, new = (measure(b, path, args.repeats, args.extra) for path in (ref_path, new_path))
        rows.append((b, ref, new))
    unit = rows[0][1]["unit"]
    print(
        f"\n| B | reference ms | fused={new_path} ms | speed-up | reference peak {unit} | fused peak {unit} | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b, ref, new in rows:
        print(
            f"| {b} | {ref['ms']:.0f} | {new['ms']:.0f} | {ref['ms'] / new['ms']:.2f}× | {ref['peak']:g} | "
            f"{new['peak']:g} | {new['peak'] / max(ref['peak'], 1e-9):.2f} |"
        )
    for b, ref, new in rows:
        print(f"B={b}: loss reference {ref['loss']:.4f}, fused {new['loss']:.4f}")


if __name__ == "__main__":
    main()
