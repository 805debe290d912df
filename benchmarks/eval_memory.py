"""Peak host memory of `hpnb.evaluate.evaluate_on_split` at COCO-Stuff-27-val size, on synthetic data of the true
shapes (the real images are not here): 2,175 val images at val_res 320, ViT-S/8 features (384-d, 40 × 40 grid),
K = 512 codes, 27 classes, and the baseline's training split of 248,145 five-crop images (49,629 × 5), which the
evaluation streams through the backbone (`hpnb.probes.StreamedFeatures`) instead of extracting it whole (≈ 305 GB
of fp16 features at 320 px).

    python benchmarks/eval_memory.py [--val 2175] [--threads 2] [--out benchmarks/results_eval_memory.txt]

What runs is the real evaluation path: a run folder (config of the `cocostuff27` preset, a random HP model),
`evaluate_on_split(run, crf=False)` (the whole val split extracted, cached and held; the baseline's training split
streamed; both protocols, HP beside the raw features), then `evaluate(..., crf=True)` of the online HP probes on the
first `--crf-images` val images while the whole val split is held. Two stand-ins only: `hpnb.runs.dataset_for` gives
synthetic images and labels (generated from the index), and `hpnb.backbones.load_backbone` a tiny backbone that maps
each 8 × 8 patch to 384 channels (the ViT's compute is not what is measured; its output shapes are).

Measured at a fraction of the work, not of the memory: the knobs below shorten loops whose memory is allocated per
batch or per iteration and freed before the next one, so the peak does not depend on them (the script checks this
for the evaluation loop: the same peak on `--eval-images` and twice as many). With them the script runs in about
5 minutes on 2 CPU cores instead of about 25 (time ≈ measured + (2175 − eval-images) × 4 evaluations × the seconds
per image printed below, + the online steps, iterations and CRF images left out):
- each of the four evaluations scores the first `--eval-images` val images (all 2,175 are extracted and held);
- the online probes of the raw features train `--steps` batches of 64 (a COCO run's selected step: up to 11,600);
- L-BFGS stops after `--lbfgs` iterations and k-means after `--kmeans` (up to 500 each in hpnb);
- the converged probes' sample keeps its real size (`WHOLE_PATCHES` = 500,000 patches) but takes `--per-image`
  patches of each image it reads instead of `MIN_PER_IMAGE` = 16 (500,000 / per-image images read, not 31,250).

Peak resident memory per phase from /proc/self/status (VmHWM, reset between phases through /proc/self/clear_refs;
getrusage's ru_maxrss is the same counter), the largest of them reported as the evaluation's peak. The CRF phase is
measured on `--crf-images` and twice as many images and extrapolated to its bound (128 images' CRF inputs pending).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

VAL_IMAGES = 2175  # COCO-Stuff-27 curated val list (Coco164kFull_Stuff_Coarse_7)
TRAIN_IMAGES = 49_629 * 5  # curated train list, five crops each
RES, PATCH, DIM, K, CLASSES = 320, 8, 384, 512, 27


def memory() -> dict:
    """Resident set now and its peak since the last reset, in GiB (Linux /proc)."""
    status = Path("/proc/self/status").read_text().splitlines()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss": kib["VmRSS"] / 2**20, "peak": kib["VmHWM"] / 2**20}


def reset_peak() -> None:
    """Start a new peak: VmHWM back to the current resident set."""
    Path("/proc/self/clear_refs").write_text("5")


class SyntheticSplit(torch.utils.data.Dataset):
    """COCO-shaped items generated from the index: normalised images (3, 320, 320) and labels (320, 320) of 27
    classes in 32-px blocks, a tenth of the blocks unlabelled (-1); each class has its own colour, plus noise."""

    def __init__(self, split: str, n: int):
        self.split, self.n, self.root, self.transform = split, n, f"synthetic-{split}", None
        self.colours = torch.rand(CLASSES, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i + (0 if self.split == "val" else 10**7))
        blocks = torch.randint(-1, CLASSES, (RES // 32, RES // 32), generator=g)
        label = blocks.repeat_interleave(32, 0).repeat_interleave(32, 1)
        image = self.colours[label.clamp_min(0)].squeeze(-1).squeeze(-1).permute(2, 0, 1)
        image = image + 0.3 * torch.randn(3, RES, RES, generator=g)
        return {"image": image, "label": label, "name": f"{self.split}_{i:06d}", "index": i}


class StandInBackbone(nn.Module):
    """ViT-S/8 output shapes at a tiny cost: each 8 × 8 patch's mean colour through a small MLP to 384 channels."""

    patch_size, embed_dim, name = PATCH, DIM, "standin_vits8"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, DIM, 1))

    def forward(self, images: torch.Tensor, attention: bool = False):
        return SimpleNamespace(feats=self.mlp(F.avg_pool2d(images, PATCH)), attn=None)


def write_run(out: Path, steps: int) -> Path:
    """A run folder of the `cocostuff27` preset with a random HP model (K = 512) selected at `steps`."""
    from hpnb.config import get_config
    from hpnb.model import HPModel

    out.mkdir(parents=True)
    get_config("cocostuff27").save(out / "config.json")
    torch.manual_seed(0)
    model = HPModel(DIM, K, CLASSES)
    meta = {"backbone": "dino_vits8", "dim": K, "in_dim": DIM, "n_classes": CLASSES, "form": "code"}
    meta["classes"] = [f"class {c}" for c in range(CLASSES)]
    torch.save({"model": model.state_dict(), "step": steps, "meta": json.dumps(meta)}, out / "checkpoint.pt")
    (out / "metrics.json").write_text(json.dumps({"best": {"step": steps}}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", type=int, default=VAL_IMAGES, help="val images (2,175: COCO-Stuff-27)")
    p.add_argument("--eval-images", type=int, default=256, help="val images each evaluation scores (time only)")
    p.add_argument("--steps", type=int, default=5, help="online probe steps of the raw features (time only)")
    p.add_argument("--lbfgs", type=int, default=3, help="L-BFGS iterations of the converged probes (time only)")
    p.add_argument("--kmeans", type=int, default=5, help="k-means iterations (time only)")
    p.add_argument("--per-image", type=int, default=160, help="patches per image read for the sample (time only)")
    p.add_argument("--crf-images", type=int, default=16, help="val images refined by the CRF, then twice as many")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results_eval_memory.txt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="hpnb_eval_memory_"))
    os.environ["HPNB_CACHE"] = str(tmp / "cache")
    os.environ["HPNB_DEVICE"] = "cpu"

    import hpnb.backbones
    import hpnb.evaluate
    import hpnb.probes
    import hpnb.runs
    from hpnb.crf import crf_available
    from hpnb.evaluate import evaluate, evaluate_on_split, load_run, model_predictor
    from hpnb.features import FeatureSet

    def head(fs: FeatureSet, n: int) -> FeatureSet:
        """The first n images of a split (views: no copy)."""
        return FeatureSet(feats=fs.feats[:n], labels=fs.labels[:n], images=fs.images[:n], names=fs.names[:n])

    scored, phases, between = [], [], []

    def evaluate_head(pred, fs, n_classes, **kw):  # the evaluation loop on the first --eval-images of the held split
        t0 = time.perf_counter()
        out = evaluate(pred, head(fs, args.eval_images), n_classes, **kw)
        scored.append((time.perf_counter() - t0) / min(len(fs), args.eval_images))
        return out

    def measured(name: str, fn):
        """`fn` with its own peak resident set and time recorded in `phases` (the peak since the previous phase in
        `between`)."""

        def wrapper(*a, **k):
            between.append(memory()["peak"])
            reset_peak()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            phases.append((name, memory()["peak"], time.perf_counter() - t0))
            reset_peak()
            return out

        return wrapper

    splits = {"val": SyntheticSplit("val", args.val), "train": SyntheticSplit("train", TRAIN_IMAGES)}
    hpnb.runs.dataset_for = lambda cfg, split, res, n=None: splits[split]
    backbone = StandInBackbone()
    hpnb.backbones.load_backbone = lambda *a, **k: backbone
    hpnb.probes.CONVERGED_ITERS = args.lbfgs
    hpnb.probes.MIN_PER_IMAGE = args.per_image
    real_kmeans = hpnb.probes.kmeans
    hpnb.probes.kmeans = lambda x, k, iters=50, seed=0, **kw: real_kmeans(
        x, k, iters=min(iters, args.kmeans), seed=seed, **kw
    )
    hpnb.evaluate.evaluate = measured("evaluate (one predictor, no CRF)", evaluate_head)
    hpnb.evaluate.extract_features_for = measured(
        "val features extracted and cached", hpnb.evaluate.extract_features_for
    )
    hpnb.evaluate.baseline_features = measured("training split opened for streaming", hpnb.evaluate.baseline_features)
    for name, what in (
        ("fit_online_probes", "online probes of the raw features (streamed batches of 64)"),
        ("patch_sample", "sample of 500,000 training patches (one streamed pass)"),
        ("fit_linear_converged", "converged linear probe"),
        ("fit_kmeans", "k-means"),
    ):
        setattr(hpnb.probes, name, measured(what, getattr(hpnb.probes, name)))
    run = write_run(tmp / "run", args.steps)

    lines = [
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"# {' '.join(sys.argv)}",
        f"# val {args.val} images at {RES} px ({RES // PATCH}x{RES // PATCH} grid, {DIM}-d, K={K}, {CLASSES} classes); "
        f"train {TRAIN_IMAGES} images, streamed; WHOLE_PATCHES={hpnb.probes.WHOLE_PATCHES}",
        f"# time-only knobs: {args.eval_images} images per evaluation, online steps {args.steps}, L-BFGS "
        f"{args.lbfgs}, k-means {args.kmeans}, {args.per_image} patches per sampled image",
    ]
    print("\n".join(lines), flush=True)
    start = memory()
    lines.append(f"start: rss {start['rss']:.2f} GiB")
    print(lines[-1], flush=True)

    t0 = time.perf_counter()
    result = evaluate_on_split(run, crf=False, progress=False)
    seconds = time.perf_counter() - t0
    between.append(memory()["peak"])
    fs = result.features
    held = sum(t.numel() * t.element_size() for t in (fs.feats, fs.labels, fs.images)) / 2**30
    overall = max([p for _, p, _ in phases] + between)
    lines.append(
        f"evaluate_on_split (val features extracted + cached, streamed baseline, both protocols, no CRF): "
        f"peak {overall:.2f} GiB, rss after {memory()['rss']:.2f} GiB, {seconds:.0f} s; val split held: {held:.2f} GiB "
        f"(feats {tuple(fs.feats.shape)} fp16, labels, images); evaluation loop {sum(scored) / len(scored):.3f} s "
        f"per image and predictor"
    )
    for name, peak, secs in phases:
        lines.append(f"  {name}: peak {peak:.2f} GiB, {secs:.0f} s")
    lines.append(f"  elsewhere in evaluate_on_split (between the phases above): peak {max(between):.2f} GiB")
    print("\n".join(lines[-len(phases) - 2 :]), flush=True)
    for protocol, rows in result.summary["protocols"].items():
        for method, row in rows["results"].items():
            lines.append(
                f"  {protocol:9s} {method:12s} cluster Acc {row['cluster']['acc']:5.1f}  "
                f"linear Acc {row['linear']['acc']:5.1f}  (random model, synthetic data)"
            )

    _, model = load_run(run)
    for n in (args.eval_images, 2 * args.eval_images):
        reset_peak()
        evaluate(model_predictor(model), head(fs, n), CLASSES)
        lines.append(
            f"evaluate (online HP probes) on the first {n} val images, the whole split held: peak "
            f"{memory()['peak']:.2f} GiB"
        )
        print(lines[-1], flush=True)
    peaks = [float(line.split("peak ")[1].split(" GiB")[0]) for line in lines if "peak " in line]
    if crf_available():  # CRF inputs wait in memory until crf_chunk (128) images are pending: two sizes below it
        crf_peaks = []
        for n in (args.crf_images, 2 * args.crf_images):
            reset_peak()
            t0 = time.perf_counter()
            evaluate(model_predictor(model), head(fs, n), CLASSES, crf=True, workers=args.threads)
            crf_peaks.append(memory()["peak"])
            lines.append(
                f"evaluate(crf=True) on the first {n} val images, the whole split held: peak {crf_peaks[-1]:.2f} GiB, "
                f"{time.perf_counter() - t0:.0f} s"
            )
            print(lines[-1], flush=True)
        measured = (crf_peaks[1] - crf_peaks[0]) / args.crf_images
        # what `evaluate` keeps per pending image: the uint8 image, fp16 cluster log-probs at full size, fp32 logit grid
        held = (RES * RES * 3 + CLASSES * RES * RES * 2 + CLASSES * (RES // PATCH) ** 2 * 4) / 2**30
        per_image = max(measured, held)
        bound = crf_peaks[1] + (128 - 2 * args.crf_images) * per_image
        lines.append(
            f"extrapolated to crf_chunk = 128 pending images: {crf_peaks[1]:.2f} + (128 - {2 * args.crf_images}) x "
            f"max(measured {measured * 2**10:.1f}, held {held * 2**10:.1f}) MiB = {bound:.2f} GiB (the CRF's worker "
            "processes hold one image each on top)"
        )
        peaks.append(bound)
    else:
        lines.append("CRF phase skipped: pydensecrf is not installed")
    print(lines[-1], flush=True)
    lines.append(
        f"peak resident set of the evaluation at COCO-Stuff-27-val size: {max(peaks):.2f} GiB (the largest phase peak; "
        "VmHWM and ru_maxrss are one counter, reset per phase)"
    )
    print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
