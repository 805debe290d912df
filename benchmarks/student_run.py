"""Wall time of notebook 06's own run on the CPU: full HP and plain Eq. 1 trained on CamVid (`camvid-cpu`, seed 0,
`hpnb.report.student_configs`) and both evaluated on the test split under protocol (ii) (`STUDENT_EVAL`), from a cold feature
cache (a fresh $HPNB_CACHE holding only the backbone weights) into fresh run folders
(runs/bench_student_run/, replaced each time), as a student meets it.

    python benchmarks/student_run.py [--threads 2] [--out benchmarks/results_student_run.txt]

Needs CamVid (`python -m hpnb download camvid`, or ../shared/data/camvid). Prints the phases, the two rows' scores
and whether they equal the saved seed-0 summaries in results/camvid/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results_student_run.txt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from hpnb.utils import cache_dir, repo_root

    weights = cache_dir("weights")
    tmp = Path(tempfile.mkdtemp(prefix="hpnb-student-"))
    shutil.copytree(weights, tmp / "cache" / "weights")
    os.environ["HPNB_CACHE"] = str(tmp / "cache")  # cold feature cache, warm weights (a download, not a run cost)

    from hpnb.backbones import load_backbone
    from hpnb.evaluate import evaluate_on_split
    from hpnb.report import STUDENT_EVAL, STUDENT_PRESET, STUDENT_SEED, paired, student_configs
    from hpnb.train import train_or_load

    lines = [
        f"{time.strftime('%Y-%m-%d')}, CPU: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {STUDENT_PRESET}, seed {STUDENT_SEED}, cold feature cache, fresh run folders"
    ]
    t0 = time.perf_counter()
    phases = {}
    configs = student_configs()
    bb = load_backbone(next(iter(configs.values())).backbone)
    phases["load the backbone"] = time.perf_counter() - t0
    summaries = {}
    runs = repo_root() / "runs" / "bench_student_run"  # fresh run folders, kept afterwards for a look
    shutil.rmtree(runs, ignore_errors=True)
    for row, cfg in configs.items():
        t = time.perf_counter()
        run = train_or_load(cfg, runs / row.split(" ")[0].strip("()"), backbone=bb, progress=False)
        phases[f"train {row} (the first also caches the training features)"] = time.perf_counter() - t
        t = time.perf_counter()
        summaries[row] = evaluate_on_split(run.out, cfg.test_split, crf=False, progress=False, **STUDENT_EVAL).summary
        phases[f"evaluate {row} on {cfg.test_split}, protocol (ii), HP's rows"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    for name, seconds in phases.items():
        lines.append(f"{name:75s} {seconds:7.0f} s")
    lines.append(f"{'total':75s} {total:7.0f} s ({total / 60:.1f} min)")
    a, g = summaries["(a) full HP"], summaries["(g) plain Eq. 1"]
    for protocol in STUDENT_EVAL["protocols"]:
        for head in ("cluster", "linear"):
            for metric in ("acc", "miou"):
                d = paired([a], [g], protocol, head, metric)[0]
                lines.append(f"(a) − (g), {protocol}, {head} {metric}: {d:+.1f}")
    saved = repo_root() / "results" / "camvid"
    for row, name in (("(a) full HP", "full"), ("(g) plain Eq. 1", "eq1")):
        path = saved / f"{name}_seed{STUDENT_SEED}_test.json"
        if path.is_file():
            want = json.loads(path.read_text())["protocols"]
            gaps = [
                abs(want[p]["results"]["HP"][h][m] - got["results"]["HP"][h][m])
                for p, got in summaries[row]["protocols"].items()
                for h in ("cluster", "linear")
                for m in ("acc", "miou")
            ]
            lines.append(f"{row}: largest difference to {path.relative_to(repo_root())}: {max(gaps):.2f} points")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
