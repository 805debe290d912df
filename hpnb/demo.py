"""`make demo`: the main job on the embedded default — train HP on the toy world (offline DINOv2-S/14, CPU),
evaluate it beside the k-means baseline (cluster and linear, with and without the dense CRF) and write
`runs/demo/report.md` with the figures. Without the optional CRF package (requirements-crf.txt) the demo runs to the
end all the same: one line says so and the report has no "+crf" columns.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpnb.config import get_config
from hpnb.report import evaluate_run
from hpnb.train import train
from hpnb.utils import setup
from hpnb.viz import use_headless_backend


def run_demo(out: str | Path = "runs/demo", progress: bool = True, **overrides) -> dict:
    """Train (toy preset), evaluate on the toy test split, write report.md; returns the evaluation summary."""
    use_headless_backend()
    setup(seed=0)
    out = Path(out)
    cfg = get_config("toy", **{"feature_precision": DEMO_PRECISION, **overrides})
    t0 = time.perf_counter()
    result = train(cfg, out=out, progress=progress)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = evaluate_run(out, split="test", crf=cfg.crf, progress=progress, workers=cfg.crf_workers)
    t_eval = time.perf_counter() - t0
    summary["seconds"] = {"features + training": round(t_train, 1), "evaluation (+ baseline, CRF)": round(t_eval, 1)}
    summary["best_val"] = result.best
    summary["steps"] = result.steps
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(_report(cfg, summary, out))
    print(f"report: {out / 'report.md'}")
    return summary


# The demo's feature cache is computed in float32 (1.5× faster on the CPU than the float64 of the notebooks and of
# results/, whose outputs must reproduce bit for bit on any CPU); the two fp16 caches differ in ≈ 0.5 % of values by one
# fp16 step. benchmarks/results_cpu_224_precision.txt measures both (10.7 vs 7.0 images/s on 2 cores).
DEMO_PRECISION = "float32"
SEED_RUNS = "results/sweep/toy-preset"  # the same preset with 3 seeds: `python tools/sweep.py run toy-preset`


def seed_spread(folder: str | Path = SEED_RUNS, split: str = "test") -> list[str]:
    """Markdown rows: mean ± std over the seeds of the toy preset saved in results/ (empty when there are none)."""
    from hpnb.report import spread_table
    from hpnb.utils import repo_root

    paths = sorted((repo_root() / folder).glob("*.json"))
    if not paths:
        return []
    records = [json.loads(p.read_text()) for p in paths]
    seeds = ", ".join(str(r["seed"]) for r in records)
    return spread_table([r["eval"][split] for r in records], f"{len(records)} seeds ({seeds}), {folder}")


def _report(cfg, summary: dict, out: Path) -> str:
    """The demo's Markdown report: the like-for-like table first (this run, then the 3-seed spread of the same
    preset from results/), then the setting, per-class IoU, figures and wall times."""
    from hpnb.report import SPREAD_HEADER, like_for_like

    evaluation = (out / "report_test.md").read_text().split("## Per-class IoU", 1)[1]
    timing = "\n".join(f"| {k} | {v:.0f} |" for k, v in summary["seconds"].items())
    best = summary["best_val"]
    spread = seed_spread()
    spread_md = (
        "\n".join(
            [
                "The same preset with 3 seeds (each seed also draws its own toy scenes), from `results/`; "
                "HP − raw is computed per seed:",
                "",
                *SPREAD_HEADER,
                *spread,
            ]
        )
        if spread
        else "No seed runs of this preset in `results/` yet (`python tools/sweep.py run toy-preset`)."
    )
    return f"""# hpnb demo: Hidden Positives on the toy world

## HP beside the raw backbone features, under the same protocol (test split, this run)

{like_for_like(summary)}

{spread_md}

## The setting

Backbone {cfg.backbone} (frozen, {cfg.res} px, features cached in {cfg.feature_precision}; the seed runs in `results/`
used float64 caches), K = {cfg.dim}, M = {cfg.pool_size}, τ = {cfg.tau},
ρ = {cfg.rho}, α = {cfg.alpha}, m = {cfg.ema_m}, λ warm-up {cfg.lam_warmup}, Q_sp renewed every {cfg.renew_every}
iterations; {summary["steps"]} iterations of batch {cfg.batch_size} on {cfg.n_train} scenes (code form of the loss),
seed {cfg.seed}. The checkpoint was selected on the val split (step {best.get("step")}); the numbers are on the separate
test split ({cfg.n_val} scenes). The small preset keeps the official operating point (docs/deviations.md).

## Per-class IoU (%)
{evaluation}
![loss parts and λ](loss.png)

![confusion of the HP cluster probe](confusion_test.png)

Wall time of this run (s):

| phase | seconds |
|---|---|
{timing}
"""
