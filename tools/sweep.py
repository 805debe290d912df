"""Sweeps of HP's small presets, with seeds, under both evaluation protocols (resumable, one JSON per run).

    python tools/sweep.py list                              # the named sweeps and their configs
    python tools/sweep.py run toy-operating-point [--seeds 0 1 2] [--only NAME ...] [--crf]
    python tools/sweep.py summary toy-operating-point [--split test]

A run trains into runs/sweep/<sweep>/<config>/seed<k>/ (an interrupted run resumes from its checkpoint), selects
its checkpoint on val (best.pt, the official rule), evaluates it on val and on the test split under both protocols
(HP's codes beside the raw backbone features, `hpnb.evaluate.PROTOCOLS`) and writes
results/sweep/<sweep>/<config>__seed<k>.json. A run whose JSON exists is skipped, so a stopped sweep continues
where it stopped. `summary` prints mean ± std over the seeds, and HP minus the raw features per seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from hpnb.config import PRESETS, scaled

ROOT = Path(__file__).resolve().parents[1]

# Table 4's rows (a), (b), (c), (g) as config switches
TABLE4 = {
    "(a) full": {},
    "(b) no LHP": dict(use_lhp=False),
    "(c) no task-specific GHP": dict(use_sp=False),
    "(g) plain Eq. 1": dict(objective="self"),
}
# notebook 06's student run: camvid-cpu in 3 epochs (135 iterations), its EMA, warm-up and renewal scaled to them
STUDENT = dict(epochs=3, **scaled(PRESETS["camvid-cpu"]["pool_size"], 3 * (367 // 8)))

# name -> (preset, {config name: overrides}); every config runs with each seed
SWEEPS: dict[str, tuple[str, dict[str, dict]]] = {
    "toy-operating-point": (
        "toy",
        {
            "as before (rho 0.05, K 64, m 0.99)": dict(rho=0.05, dim=64, ema_m=0.99, lam_warmup=20, renew_every=20),
            "scaled rho (rho·M = 41)": dict(rho=0.32, dim=64, ema_m=0.99, lam_warmup=20, renew_every=20),
            "scaled rho, K 512": dict(rho=0.32, dim=512, ema_m=0.99, lam_warmup=20, renew_every=20),
            "scaled (rho, K, m, warm-up, renewal)": dict(rho=0.32, dim=512, ema_m=0.6, lam_warmup=19, renew_every=2),
            "scaled, 3x longer (18 epochs)": dict(
                rho=0.32, dim=512, ema_m=0.86, lam_warmup=57, renew_every=6, epochs=18, val_every=111
            ),
            "scaled, tau 0.3": dict(rho=0.32, dim=512, ema_m=0.6, lam_warmup=19, renew_every=2, tau=0.3),
            "scaled, M 256 (rho 0.16)": dict(rho=0.16, dim=512, ema_m=0.6, lam_warmup=19, renew_every=2, pool_size=256),
        },
    ),
    # the toy preset as it ships (make demo runs its seed 0; the report shows the spread of these three), and plain
    # Eq. 1 (Table 4's row (g)) at the same preset
    "toy-preset": ("toy", {"toy preset": {}, "plain Eq. 1 (g)": dict(objective="self")}),
    # Table 4's rows at the notebooks' scale (the toy-notebook preset of notebooks 04-05: 96 scenes, 36 iterations)
    "toy-table4": ("toy-notebook", TABLE4),
    # a toy-world property: the share of regions in their class's own material (toy_link; 0 is the shipped world)
    "toy-link": (
        "toy-notebook",
        {
            f"{row}, toy_link {link}": dict(TABLE4[row], toy_link=link)
            for link in (1.0,)
            for row in ("(a) full", "(g) plain Eq. 1")
        },
    ),
    # the student's CamVid run of notebook 06: camvid-cpu in half its iterations (3 epochs), full HP and plain Eq. 1
    "camvid-student": (
        "camvid-cpu",
        {"(a) full, 3 epochs": STUDENT, "(g) plain Eq. 1, 3 epochs": dict(STUDENT, objective="self")},
    ),
    "camvid-operating-point": (
        "camvid-cpu",
        {
            "as before (rho 0.02, K 64, m 0.99)": dict(rho=0.02, dim=64, ema_m=0.99, lam_warmup=50, renew_every=20),
            "scaled (rho, K, m, warm-up, renewal)": dict(rho=0.32, dim=512, ema_m=0.57, lam_warmup=23, renew_every=2),
        },
    ),
}


def result_path(sweep: str, config: str, seed: int) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in config)
    return ROOT / "results" / "sweep" / sweep / f"{safe}__seed{seed}.json"


def run_one(sweep: str, preset: str, config: str, overrides: dict, seed: int, crf: bool) -> Path:
    """Train (or resume) one config with one seed, evaluate on val and test, write its JSON; skip when done."""
    import torch

    from hpnb.config import get_config
    from hpnb.evaluate import evaluate_on_split
    from hpnb.train import train

    out = result_path(sweep, config, seed)
    if out.is_file():
        print(f"done already: {out.relative_to(ROOT)}")
        return out
    cfg = get_config(preset, **{**overrides, "seed": seed, "crf": crf})
    run = ROOT / "runs" / "sweep" / sweep / out.stem
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = train(cfg, out=run, resume=True, progress=False)
    train_s = time.perf_counter() - t0
    evals = {}
    for split in dict.fromkeys((cfg.val_split, cfg.test_split)):
        evals[split] = evaluate_on_split(run, split, crf=crf, progress=False).summary
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "sweep": sweep,
        "preset": preset,
        "config": config,
        "overrides": overrides,
        "seed": seed,
        "steps": result.steps,
        "best_val": result.best,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "threads": torch.get_num_threads(),
        "resolved_config": cfg.to_dict(),
        "eval": evals,
    }
    tmp = out.with_suffix(".part")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    print(f"wrote {out.relative_to(ROOT)} ({record['total_seconds']:.0f} s)")
    return out


def summary(sweep: str, split: str = "test") -> str:
    """Markdown: per config, both protocols, HP and raw features, mean ± std over seeds, and HP − raw per seed."""
    from hpnb.report import SPREAD_HEADER, spread_table

    folder = ROOT / "results" / "sweep" / sweep
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return f"no results in {folder}"
    by_config: dict[str, list[dict]] = {}
    for r in records:
        by_config.setdefault(r["config"], []).append(r)
    lines = [f"## {sweep}: {split} split, mean ± std over seeds", "", *SPREAD_HEADER]
    for config, runs in by_config.items():
        seeds = ",".join(str(r["seed"]) for r in runs)
        minutes = [r["total_seconds"] / 60 for r in runs]
        label = f"{config} (seeds {seeds}; {statistics.mean(minutes):.0f} min per run)"
        lines += spread_table([r["eval"][split] for r in runs], label)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("sweep", choices=sorted(SWEEPS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--only", nargs="*", default=None, help="config names (default: all)")
    r.add_argument("--crf", action="store_true", help="also the dense CRF (slow; off in sweeps)")
    s = sub.add_parser("summary")
    s.add_argument("sweep", choices=sorted(SWEEPS))
    s.add_argument("--split", default="test")
    args = p.parse_args(argv)
    if args.command == "list":
        for name, (preset, configs) in SWEEPS.items():
            print(f"{name} (preset {preset}):")
            for config, overrides in configs.items():
                print(f"  {config}: {overrides}")
        return 0
    if args.command == "summary":
        print(summary(args.sweep, args.split))
        return 0
    preset, configs = SWEEPS[args.sweep]
    for seed in args.seeds:  # seed-major: a first full pass over the configs comes early
        for config, overrides in configs.items():
            if args.only is None or config in args.only:
                run_one(args.sweep, preset, config, overrides, seed, args.crf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
