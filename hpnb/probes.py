"""The probes that turn codes (or raw backbone features) into classes, for the two evaluation protocols.

(i)  paper protocol: the *online* probes of the official code — a linear 1×1 probe and a cluster probe (centroids
     drawn from N(0, 1), trained with Adam on the negative best cosine) — trained for a given number of steps. HP
     trains them during its run on detached codes; the baseline row trains the same probes, alone, for the same
     steps with the same settings on the frozen backbone features (`fit_online_probes`).
(ii) converged: k-means with k = classes (`hpnb.baseline.kmeans`, k-means++ seeding, iterated to convergence) and a
     linear probe fitted to convergence (`fit_linear_converged`), on frozen HP codes or on the raw features.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hpnb.baseline import kmeans, sample_patches
from hpnb.features import FeatureSet
from hpnb.metrics import IGNORE
from hpnb.model import ClusterProbe

Codes = Callable[[torch.Tensor], torch.Tensor]  # backbone features (B, C, h, w) -> codes (B, K, h, w)


def _identity(feats: torch.Tensor) -> torch.Tensor:
    return feats.float()


def code_set(fs: FeatureSet, codes: Codes | None = None, batch: int = 16) -> FeatureSet:
    """The same split with its features replaced by `codes(features)` (in the dtype `codes` returns; fp32 raw
    features when codes is None)."""
    codes = codes or _identity
    with torch.no_grad():
        out = torch.cat([codes(fs.feats[i : i + batch].float()) for i in range(0, len(fs), batch)])
    return FeatureSet(feats=out, labels=fs.labels, images=fs.images, names=fs.names, meta=dict(fs.meta))


def _targets(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    labels = labels.long()
    return torch.where((labels >= 0) & (labels < n_classes), labels, torch.full_like(labels, IGNORE))


def fit_online_probes(
    fs: FeatureSet,
    n_classes: int,
    steps: int,
    batch: int = 8,
    linear_lr: float = 1e-3,
    cluster_lr: float = 5e-3,
    seed: int = 0,
    codes: Codes | None = None,
) -> tuple[nn.Conv2d, torch.Tensor]:
    """Protocol (i) without HP: the official online probes trained alone for `steps` batches on frozen features
    (or frozen codes). Same probes, losses, optimisers, learning rates and batch size as during HP training; the
    batches follow the trainer's epoch order. Returns (linear probe, cluster centroids)."""
    codes = codes or _identity
    torch.manual_seed(seed)  # the N(0, 1) centroids and the linear init, as HPModel draws them
    dim = codes(fs.feats[:1].float()).shape[1]
    linear, cluster = nn.Conv2d(dim, n_classes, 1), ClusterProbe(dim, n_classes)
    # float64 on the CPU (same initial values): the printed scores then do not depend on the number of threads
    dtype = torch.float64 if fs.feats.device.type == "cpu" else torch.float32
    linear, cluster = linear.to(dtype), cluster.to(dtype)
    opt_linear = torch.optim.Adam(linear.parameters(), lr=linear_lr)
    opt_cluster = torch.optim.Adam(cluster.parameters(), lr=cluster_lr)
    per_epoch = max(1, len(fs) // batch)
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(len(fs), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        idx = order[i * batch : (i + 1) * batch]
        with torch.no_grad():
            z = codes(fs.feats[idx].float()).to(dtype)
        labels = _targets(fs.labels[idx], n_classes)
        logits = F.interpolate(linear(z), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE) + cluster.loss(z)
        opt_linear.zero_grad()
        opt_cluster.zero_grad()
        loss.backward()
        opt_linear.step()
        opt_cluster.step()
    return linear.float().eval(), cluster.centroids.detach().float()


def patch_targets(labels: torch.Tensor, grid: tuple[int, int], n_classes: int) -> torch.Tensor:
    """The share of each class among the labelled pixels of each patch: (n, H, W) -> (n, C, h, w); 0 where none."""
    one_hot = F.one_hot(_targets(labels, n_classes).clamp_min(-1) + 1, n_classes + 1).permute(0, 3, 1, 2).float()
    counts = F.adaptive_avg_pool2d(one_hot, grid)[:, 1:]  # drop the ignore channel
    return counts / counts.sum(1, keepdim=True).clamp_min(1e-12)


def fit_linear_converged(
    fs: FeatureSet, n_classes: int, codes: Codes | None = None, max_iter: int = 500, weight_decay: float = 1e-4
) -> nn.Conv2d:
    """Protocol (ii): a linear probe fitted to convergence on frozen features (or codes): full-batch L-BFGS on the
    cross-entropy against each patch's pixel-exact class shares (soft targets), with a small L2 penalty so that the
    optimum exists; evaluated like any probe (logits bilinearly upsampled to the labels)."""
    data = code_set(fs, codes)
    x = data.feats.permute(0, 2, 3, 1).reshape(-1, data.feats.shape[1])  # (P, D)
    y = patch_targets(fs.labels, data.grid, n_classes).permute(0, 2, 3, 1).reshape(-1, n_classes)  # (P, C)
    keep = y.sum(1) > 0
    # float64 on the CPU: the fitted probe, and every score printed from it, then do not depend on the thread count
    dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    x, y = x[keep].to(dtype), y[keep].to(dtype)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # standardise for a well-conditioned problem, fold back below
    xs = (x - mean) / std
    weight = torch.zeros(n_classes, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = -(y * F.log_softmax(xs @ weight.T + bias, dim=1)).sum(1).mean() + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    probe = nn.Conv2d(x.shape[1], n_classes, 1).to(x.device)
    with torch.no_grad():  # logits = ((x - mean) / std) W^T + b  ==  x (W / std)^T + (b - W·mean/std)
        w = weight / std
        probe.weight.copy_(w[:, :, None, None])
        probe.bias.copy_(bias - w @ mean)
    return probe.eval()


def fit_kmeans(
    fs: FeatureSet, n_clusters: int, codes: Codes | None = None, seed: int = 0, max_points: int = 100_000
) -> torch.Tensor:
    """Protocol (ii): k-means centroids (cosine, k-means++ seeding, to convergence) on frozen features or codes."""
    return kmeans(sample_patches(code_set(fs, codes), max_points, seed), n_clusters, iters=500, seed=seed)
