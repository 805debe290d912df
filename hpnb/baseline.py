"""The reference every result is compared with: k-means on L2-normalised backbone features, Hungarian-matched."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpnb.features import FeatureSet
from hpnb.metrics import Scores, SegmentationMetric
from hpnb.utils import device_generator


def kmeans(
    x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, tol: float = 1e-6, record: dict | None = None
) -> torch.Tensor:
    """Spherical k-means (cosine assignment, renormalised means) with k-means++ seeding; x_nd unit rows -> (k, d).

    Runs where x is; the seeding draws come from a generator on that device, seeded with `seed`. It stops when the
    objective (the summed cosine of each point to its centroid) changes by at most `tol` of itself, or after `iters`
    iterations. `record`, when given, is filled with how it stopped (`kmeans_record`)."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, found {x.shape[0]}")
    gen = device_generator(x.device, seed)
    # float64 on the CPU: the assignments, and every score printed from them, then do not depend on the thread count
    x = F.normalize(x.double() if x.device.type == "cpu" else x.float(), dim=1)
    centroids = x[torch.randint(len(x), (1,), generator=gen, device=x.device)]
    for _ in range(1, k):  # k-means++: next centre drawn ∝ squared distance to the nearest chosen one
        d2 = (2 - 2 * (x @ centroids.T)).clamp_min(0).min(dim=1).values
        nxt = torch.multinomial(d2 + 1e-12, 1, generator=gen)
        centroids = torch.cat([centroids, x[nxt]])
    prev, change, shift, done, converged = None, None, None, 0, False
    for _ in range(iters):
        done += 1
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = torch.bincount(assign, minlength=k) == 0
        sums[empty] = centroids[empty]  # keep an empty cluster's centre where it was
        moved = F.normalize(sums, dim=1)
        shift, centroids = (moved - centroids).norm(dim=1).max(), moved  # the largest move of a centroid
        obj = (x * centroids[assign]).sum()
        if prev is not None:
            change = abs(obj - prev) / abs(prev)  # recorded only: the rule below is the one that decides
            if abs(obj - prev) <= tol * abs(prev):
                converged = True
                break
        prev = obj
    if record is not None:
        record.update(kmeans_record(done, iters, tol, converged, change, shift))
    return centroids.float()


def kmeans_record(
    iters: int, max_iter: int, tol: float, converged: bool, change: torch.Tensor | None, shift: torch.Tensor | None
) -> dict:
    """How a k-means run stopped, JSON-ready: `iterations` used of `max_iter`; `objective_change`, the last relative
    change of the objective (the summed cosine of each point to its centroid), which the stopping rule compares with
    `tol`; `centroid_shift`, the largest move of a centroid in the last iteration (unit vectors: 0 at a fixed point);
    `converged`: stopped by the rule (False: stopped at the cap with the objective still moving). The tensors are
    read here, once, not in the loop (on a GPU each read waits for the device)."""
    return {
        "method": "k-means",
        "iterations": iters,
        "max_iter": max_iter,
        "objective_change": None if change is None else float(change),
        "tol": tol,
        "centroid_shift": None if shift is None else float(shift),
        "converged": converged,
    }


def sample_patches(fs: FeatureSet, max_points: int, seed: int = 0) -> torch.Tensor:
    """Up to `max_points` L2-normalised patch features (n, C) drawn uniformly from a FeatureSet."""
    flat = fs.feats.permute(0, 2, 3, 1).reshape(-1, fs.feats.shape[1])
    if len(flat) > max_points:
        flat = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_points]]
    return F.normalize(flat.float(), dim=1)


def cluster_logits(feats: torch.Tensor, centroids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cosine to centroids after bilinear upsampling of the features to `size` (spec §4.2): (B, C, h, w) -> (B, k, H, W)."""
    up = F.interpolate(feats.float(), size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bchw,kc->bkhw", F.normalize(up, dim=1), centroids)


def predict_clusters(fs: FeatureSet, centroids: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Cluster index per pixel at label resolution, (N, H, W) int64 on the CPU, computed on the centroids' device."""
    size, device = tuple(fs.labels.shape[-2:]), centroids.device
    return torch.cat(
        [
            cluster_logits(fs.feats[i : i + batch].to(device), centroids, size).argmax(1).cpu()
            for i in range(0, len(fs), batch)
        ]
    )


@dataclass
class BaselineResult:
    """Scores of the k-means baseline, its centroids and the cluster -> class map."""

    scores: Scores
    centroids: torch.Tensor
    mapping: np.ndarray
    confusion: torch.Tensor


def kmeans_baseline(
    train: FeatureSet,
    evaluate: FeatureSet,
    n_classes: int,
    n_clusters: int | None = None,
    max_points: int = 100_000,
    seed: int = 0,
) -> BaselineResult:
    """Fit k-means on `train` patches, predict every pixel of `evaluate`, Hungarian-match, score (Acc, mIoU)."""
    centroids = kmeans(sample_patches(train, max_points, seed), n_clusters or n_classes, seed=seed)
    metric = SegmentationMetric(n_classes, n_pred=len(centroids))
    metric.update(predict_clusters(evaluate, centroids), evaluate.labels)
    return BaselineResult(scores=metric.compute(), centroids=centroids, mapping=metric.mapping(), confusion=metric.conf)


def toyworld_colour_kmeans(
    n_scenes: int = 100, res: int = 224, patch: int = 14, seed: int = 0, split: str = "val"
) -> Scores:
    """How hard the toy world is without a ViT: Acc/mIoU of k-means (k = classes) on standardised hand-made colour
    and edge statistics per patch (`hpnb.data.toyworld.patch_features`), Hungarian-matched, pixel-exact."""
    from hpnb.data.toyworld import N_CLASSES, ToyWorld, patch_features, patch_histograms

    data = ToyWorld(split, n=n_scenes, res=res, seed=seed)
    scenes = [data.raw(i) for i in range(n_scenes)]
    feats = np.concatenate([patch_features(img, patch) for img, _ in scenes])
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    x = F.normalize(torch.from_numpy(feats).float(), dim=1)
    assign = (x @ kmeans(x, N_CLASSES, seed=seed).T).argmax(1).numpy()  # (n_scenes * gh * gw,)
    hist = np.concatenate([patch_histograms(label, patch) for _, label in scenes])  # (n_scenes * gh * gw, C)
    metric = SegmentationMetric(N_CLASSES)
    metric.conf += torch.from_numpy(np.eye(N_CLASSES, dtype=np.int64)[assign].T @ hist)  # pixel-exact counts
    return metric.compute()
