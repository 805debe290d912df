"""`make demo`: the main job on the embedded default (toy world + offline DINOv2-S/14), with a Markdown report.

At this stage of the project the demo extracts backbone features and reports the k-means baseline that every
later result (HP training) is compared with.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from hpnb.backbones import DEFAULT_BACKBONE, load_backbone
from hpnb.baseline import kmeans_baseline, predict_clusters
from hpnb.features import extract_features
from hpnb.metrics import remap
from hpnb.utils import setup
from hpnb.viz import label_grid, use_headless_backend


def run_demo(out: str | Path = "runs/demo", res: int = 224, n_train: int = 300, n_val: int = 100,
             backbone: str = DEFAULT_BACKBONE, progress: bool = True) -> dict:
    """Extract features of the toy world (train/val), fit k-means on train, score val, write `out/report.md`."""
    from hpnb.toyworld import CLASSES, PALETTE, ToyWorld

    use_headless_backend()
    session = setup(seed=0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    model = load_backbone(backbone, device=session.device)
    times["load backbone"] = time.perf_counter() - t0
    sets = {}
    for split, n in (("train", n_train), ("val", n_val)):
        t0 = time.perf_counter()
        sets[split] = extract_features(model, ToyWorld(split=split, n=n, res=res), progress=progress)
        times[f"features {split}"] = time.perf_counter() - t0
        print(sets[split].summary())
    t0 = time.perf_counter()
    result = kmeans_baseline(sets["train"], sets["val"], n_classes=len(CLASSES))
    times["k-means + evaluation"] = time.perf_counter() - t0
    print(f"k-means baseline on toy/val: {result.scores}")

    val = sets["val"]
    pred = remap(predict_clusters(val, result.centroids)[:4], result.mapping)
    fig = label_grid(val.images[:4].numpy(), {"ground truth": val.labels[:4].numpy(), "k-means (matched)": pred.numpy()},
                     list(CLASSES), PALETTE)
    fig.savefig(out / "qualitative.png", dpi=80)

    summary = {"dataset": "toy", "backbone": backbone, "res": res, "n_train": n_train, "n_val": n_val,
               "kmeans": result.scores.as_dict(), "classes": list(CLASSES),
               "seconds": {k: round(v, 1) for k, v in times.items()}}
    (out / "baseline.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(_report(summary))
    print(f"report: {out / 'report.md'}")
    return summary


def _report(s: dict) -> str:
    """Markdown report of the demo."""
    rows = "\n".join(f"| {name} | {iou:.1f} |" for name, iou in zip(s["classes"], s["kmeans"]["iou"]))
    timing = "\n".join(f"| {k} | {v:.1f} |" for k, v in s["seconds"].items())
    return f"""# hpnb demo: toy world, {s['backbone']}

Features of the frozen backbone at {s['res']} px; k-means (k = {len(s['classes'])}) fitted on {s['n_train']} train
scenes, every pixel of {s['n_val']} val scenes assigned to its nearest centroid (cosine, features bilinearly
upsampled), clusters Hungarian-matched to classes.

| method | pixel Acc (%) | mIoU (%) |
|---|---|---|
| k-means on backbone features | {s['kmeans']['acc']:.2f} | {s['kmeans']['miou']:.2f} |

Per-class IoU (k-means):

| class | IoU (%) |
|---|---|
{rows}

![qualitative](qualitative.png)

Wall time (s), this run:

| step | seconds |
|---|---|
{timing}
"""
