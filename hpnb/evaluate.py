"""Evaluation (spec §4.2–4.3): codes bilinearly upsampled, cluster probe + Hungarian, linear probe, dense CRF.

The same code path scores HP and the k-means baseline: both are a `Predictor` (codes from backbone features,
a linear probe, cluster centroids). For the baseline the codes are the backbone features themselves, the
centroids come from k-means and the linear probe is fitted on the frozen features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hpnb.features import FeatureSet
from hpnb.metrics import IGNORE, SegmentationMetric, remap
from hpnb.runs import load_run  # the run folder's reader (also reachable as hpnb.evaluate.load_run)


@dataclass
class Predictor:
    """What evaluation needs: backbone features -> codes, a 1×1 linear probe on codes, cluster centroids."""

    codes: Callable[[torch.Tensor], torch.Tensor]
    linear: nn.Module
    centroids: torch.Tensor
    name: str = "model"


def model_predictor(model, name: str = "HP") -> Predictor:
    """Predictor of a trained HPModel (eval mode: no dropout; codes from S, as the official evaluation)."""
    model.eval()
    return Predictor(
        codes=lambda f: model.heads.seg(f.float()),
        linear=model.linear_probe,
        centroids=model.cluster_probe.centroids.detach(),
        name=name,
    )


def fit_linear_probe(
    fs: FeatureSet, n_classes: int, steps: int = 200, lr: float = 1e-3, batch: int = 8, seed: int = 0, device=None
) -> nn.Conv2d:
    """A 1×1 linear probe on frozen features (the baseline's 'linear' column): Adam, CE against the train labels.

    Give it the same budget (steps, batch, lr) as the HP run's online probe for a like-for-like comparison."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = device or torch.device("cpu")
    probe = nn.Conv2d(fs.feats.shape[1], n_classes, 1).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    done = 0
    while done < steps:
        for idx in torch.randperm(len(fs), generator=gen).split(batch):
            if done == steps:
                break
            done += 1
            feats = fs.feats[idx].float().to(device)
            labels = fs.labels[idx].long().to(device)
            logits = F.interpolate(probe(feats), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            labels = torch.where((labels >= 0) & (labels < n_classes), labels, torch.full_like(labels, IGNORE))
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


def kmeans_predictor(
    train: FeatureSet,
    n_classes: int,
    seed: int = 0,
    probe_steps: int = 200,
    probe_batch: int = 8,
    probe_lr: float = 1e-3,
) -> Predictor:
    """The baseline: k-means centroids (on L2-normalised features) and a linear probe, both on the frozen backbone."""
    from hpnb.baseline import kmeans, sample_patches

    centroids = kmeans(sample_patches(train, 100_000, seed), n_classes, seed=seed)
    probe = fit_linear_probe(train, n_classes, steps=probe_steps, lr=probe_lr, batch=probe_batch, seed=seed)
    return Predictor(codes=lambda f: f.float(), linear=probe, centroids=centroids, name="k-means")


@dataclass
class EvalResult:
    """Scores (percent) per head, before and after the CRF, plus matched confusions and a few predictions."""

    scores: dict  # {"cluster": Scores, "linear": Scores, "cluster+crf": ..., "linear+crf": ...}
    confusion: dict  # name -> (C, C) matched confusion (rows predicted class, cols GT)
    samples: dict = field(default_factory=dict)  # name -> (n, H, W) predictions of the first images (matched)
    mappings: dict = field(default_factory=dict)  # name -> cluster -> class map (identity for linear heads)

    def table(self) -> dict:
        """{name: {"acc": ..., "miou": ...}} rounded to 2 decimals."""
        return {k: {"acc": round(v.acc, 2), "miou": round(v.miou, 2)} for k, v in self.scores.items()}


@torch.no_grad()
def evaluate(
    pred: Predictor,
    fs: FeatureSet,
    n_classes: int,
    crf: bool = False,
    workers: int | None = None,
    batch: int = 4,
    keep: int = 4,
    crf_chunk: int = 128,
    progress: bool = False,
) -> EvalResult:
    """Score a predictor on a cached split: cluster (Hungarian) and linear, optionally + dense CRF."""
    from hpnb.metrics import matched_confusion

    heads = ("cluster", "linear") + (("cluster+crf", "linear+crf") if crf else ())
    metrics = {
        h: SegmentationMetric(
            n_classes, n_pred=len(pred.centroids) if "cluster" in h else n_classes, hungarian="cluster" in h
        )
        for h in heads
    }
    raw = {h: [] for h in heads}  # unmatched predictions of the first `keep` images
    pending = []  # CRF inputs waiting for a parallel batch
    centroids = F.normalize(pred.centroids.float(), dim=1)

    def flush():
        from hpnb.crf import crf_batch

        images = [p[0] for p in pending]
        for name, k in (("cluster+crf", 1), ("linear+crf", 2)):
            labels = crf_batch(images, [p[k] for p in pending], workers=workers)
            for (_, _, _, target, index), lab in zip(pending, labels, strict=True):
                lab_t = torch.from_numpy(lab)
                metrics[name].update(lab_t, target)
                if index < keep:
                    raw[name].append(lab_t)
        pending.clear()

    for start in tqdm(range(0, len(fs), batch), desc="evaluate", disable=not progress, leave=False):
        feats = fs.feats[start : start + batch].float()
        labels = fs.labels[start : start + batch].long()
        size = tuple(labels.shape[-2:])
        codes = pred.codes(feats)  # (b, K, h, w)
        lin_grid = pred.linear(codes)  # linear probe commutes with bilinear upsampling (weights sum to 1)
        lin = F.interpolate(lin_grid, size=size, mode="bilinear", align_corners=False)
        up = F.normalize(F.interpolate(codes, size=size, mode="bilinear", align_corners=False), dim=1)
        cos = torch.einsum("bkhw,ck->bchw", up, centroids)
        for name, logits in (("cluster", cos), ("linear", lin)):
            p = logits.argmax(1)
            metrics[name].update(p, labels)
            for j in range(len(p)):
                if start + j < keep:
                    raw[name].append(p[j])
        if crf:
            for j in range(len(feats)):
                cluster_logp = torch.log_softmax(2 * cos[j], dim=0).half().numpy()  # official alpha = 2
                pending.append((fs.images[start + j].numpy(), cluster_logp, lin_grid[j].numpy(), labels[j], start + j))
            if len(pending) >= crf_chunk:
                flush()
    if pending:
        flush()

    scores, confusion, samples, mappings = {}, {}, {}, {}
    for name, metric in metrics.items():
        scores[name] = metric.compute()
        mapping = mappings[name] = metric.mapping()
        confusion[name] = matched_confusion(metric.conf.numpy(), mapping)
        if raw[name]:
            samples[name] = remap(torch.stack(raw[name]), mapping) if metric.hungarian else torch.stack(raw[name])
    return EvalResult(scores=scores, confusion=confusion, samples=samples, mappings=mappings)


# ----------------------------------------------------------------------------------------------------------
# Runs: load, evaluate beside the k-means baseline, predict one image
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RunEvaluation:
    """A run evaluated on one split: the summary written to eval_<split>.json, the results per method, the split's
    cached features (images and labels, for figures) and the run's config."""

    summary: dict
    results: dict  # {"HP": EvalResult, "k-means": EvalResult}
    features: FeatureSet
    cfg: object


def evaluate_on_split(
    run,
    split: str | None = None,
    crf: bool = True,
    which: str = "best",
    baseline: bool = True,
    progress: bool = True,
    workers: int | None = None,
) -> RunEvaluation:
    """Evaluate a run's selected checkpoint on a split (default: the preset's test split) beside the k-means baseline
    through the same code path; write eval_<split>.json and cluster_mapping.json into the run folder.

    The baseline's linear probe gets the budget of the HP probe it is compared with: the steps of the selected
    checkpoint (`hpnb.runs.selected_step`). Figures and the Markdown report: `hpnb.report.evaluate_run`."""
    import json
    from pathlib import Path

    from hpnb.backbones import load_backbone
    from hpnb.crf import resolve_crf
    from hpnb.runs import dataset_for, selected_step

    crf = resolve_crf(crf)  # without pydensecrf: one line, then no "+crf" heads
    run = Path(run)
    cfg, model = load_run(run, which)
    split = split or cfg.test_split
    backbone = load_backbone(cfg.backbone, weights=cfg.backbone_weights, device="cpu")
    fs = extract_features_for(
        backbone, dataset_for(cfg, split, cfg.val_res, cfg.n_val), progress, precision=cfg.feature_precision
    )
    n_classes, classes = model.n_classes, list(model.classes)
    results = {"HP": evaluate(model_predictor(model), fs, n_classes, crf=crf, workers=workers, progress=progress)}
    if baseline:
        from hpnb.features import extract_features

        # the trainer's cached train features (they carry attention) serve when the resolutions agree
        reuse = cfg.backbone_mode == "cache" and cfg.val_res == cfg.res
        train_fs = extract_features(
            backbone,
            dataset_for(cfg, cfg.train_split, cfg.val_res, cfg.n_train),
            attention=reuse,
            progress=progress,
            precision=cfg.feature_precision,
        )
        steps = selected_step(run, which)  # the training steps of the HP probe it is compared with
        results["k-means"] = evaluate(
            kmeans_predictor(
                train_fs,
                n_classes,
                seed=cfg.seed,
                probe_steps=steps,
                probe_batch=cfg.batch_size,
                probe_lr=cfg.linear_lr,
            ),
            fs,
            n_classes,
            crf=crf,
            workers=workers,
            progress=progress,
        )
    summary = {
        "run": str(run),
        "split": split,
        "checkpoint": which,
        "classes": classes,
        "selection": "best on val by cluster Acc + cluster mIoU + linear Acc + linear mIoU (official rule)"
        if which == "best"
        else "last iteration",
        "results": {name: {head: s.as_dict() for head, s in r.scores.items()} for name, r in results.items()},
    }
    (run / f"eval_{split}.json").write_text(json.dumps(summary, indent=2))
    (run / "cluster_mapping.json").write_text(json.dumps(results["HP"].mappings["cluster"].tolist()))
    return RunEvaluation(summary=summary, results=results, features=fs, cfg=cfg)


def extract_features_for(backbone, dataset, progress: bool = True, precision: str = "auto"):
    """Cached features without attention (evaluation does not need it)."""
    from hpnb.features import extract_features

    return extract_features(backbone, dataset, attention=False, progress=progress, precision=precision)


def predict(image, run_or_checkpoint, crf: bool = True, head: str = "cluster", which: str = "best"):
    """Label map (H, W) for one RGB image of any size (uint8 array or PIL image).

    The whole image is resized (not cropped) so that its shorter side is the run's `val_res` and both sides are
    multiples of the patch size; the logits are upsampled back to the original size, the CRF runs on the original
    image. Cluster ids are mapped to classes with the Hungarian map saved by the evaluation, when there is one.
    """
    import json
    from pathlib import Path

    from PIL import Image

    from hpnb.backbones import load_backbone
    from hpnb.data import normalize

    cfg, model = load_run(run_or_checkpoint, which) if not isinstance(run_or_checkpoint, tuple) else run_or_checkpoint
    image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    h, w = image.shape[:2]
    backbone = load_backbone(cfg.backbone, weights=cfg.backbone_weights, device="cpu")
    p = backbone.patch_size
    scale = cfg.val_res / min(h, w)
    nh, nw = max(p, round(h * scale / p) * p), max(p, round(w * scale / p) * p)
    x = (
        torch.from_numpy(np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))).permute(2, 0, 1).float()
        / 255
    )
    feats = backbone(normalize(x)[None], attention=False).feats
    with torch.no_grad():
        codes = model.heads.seg(feats.float())
        if head == "linear":
            grid_logits = model.linear_probe(codes)
            logits = F.interpolate(grid_logits, size=(h, w), mode="bilinear", align_corners=False)[0]
        else:
            up = F.normalize(F.interpolate(codes, size=(h, w), mode="bilinear", align_corners=False), dim=1)
            logits = 2 * torch.einsum("bkhw,ck->bchw", up, F.normalize(model.cluster_probe.centroids, dim=1))[0]
    from hpnb.crf import dense_crf, resolve_crf

    if resolve_crf(crf):  # without pydensecrf: one line, then the prediction without the CRF
        labels = torch.from_numpy(dense_crf(image, torch.log_softmax(logits, 0)).argmax(0))
    else:
        labels = logits.argmax(0)
    mapping_file = (
        Path(run_or_checkpoint) / "cluster_mapping.json" if not isinstance(run_or_checkpoint, tuple) else None
    )
    if head == "cluster" and mapping_file is not None and mapping_file.is_file():
        labels = remap(labels, np.asarray(json.loads(mapping_file.read_text())))
    return labels.numpy()
