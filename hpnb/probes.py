"""The probes that turn codes (or raw backbone features) into classes, for the two evaluation protocols.

(i)  paper protocol: the *online* probes of the official code — a linear 1×1 probe and a cluster probe (centroids
     drawn from N(0, 1), trained with Adam on the negative best cosine) — trained for a given number of steps. HP
     trains them during its run on detached codes; the baseline row trains the same probes, alone, for the same
     steps with the same settings on the frozen backbone features (`fit_online_probes`).
(ii) converged: k-means with k = classes (`hpnb.baseline.kmeans`, k-means++ seeding, iterated to convergence) and a
     linear probe fitted to convergence (`fit_linear_converged`), on frozen HP codes or on the raw features.

The training split they are fitted on is a `FeatureSet` (cached features in memory) or `StreamedFeatures` (the
frozen backbone run batch by batch, for training sets whose features do not fit in memory: COCO-Stuff-27's 248k
five-crop images would be ≈ 305 GB of fp16 features at 320 px). Up to `WHOLE_PATCHES` patches the converged probes
use every patch (the notebooks' sizes); above, a uniform sample of that many patches (`patch_sample`), read in one
streamed pass. The online probes are fed batch by batch in either case. Every fit runs on the device it is given
(the model's, in `hpnb.evaluate.protocol_predictors`): float64 on the CPU, so that the printed scores do not depend
on the CPU or its thread count, float32 on a GPU.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hpnb.baseline import kmeans, sample_patches
from hpnb.features import FeatureSet
from hpnb.metrics import IGNORE
from hpnb.model import ClusterProbe
from hpnb.utils import autocast, on_accelerator

Codes = Callable[[torch.Tensor], torch.Tensor]  # backbone features (B, C, h, w) -> codes (B, K, h, w)

PROBE_VERSION = 2  # bump when a change here or in hpnb.baseline.kmeans changes a fit: baselines are memoised under it
WHOLE_PATCHES = 500_000  # converged probes: every patch up to this many, a uniform sample of this many above
KMEANS_PATCHES = 100_000  # k-means: a uniform sample of this many patches (k-means++ seeding, to convergence)
KMEANS_ITERS = 500  # k-means iterations at most (it stops earlier when its objective moves by KMEANS_TOL or less)
KMEANS_TOL = 1e-6  # k-means stops when its objective changes by at most this share of itself
CONVERGED_ITERS = 500  # L-BFGS iterations of the converged linear probe (it stops earlier at its tolerances)
WEIGHT_DECAY = 1e-4  # the converged linear probe's L2 penalty (the optimum then exists)
LBFGS = {  # the converged linear probe's L-BFGS, besides max_iter (max_eval: torch's default, 1.25 × max_iter)
    "lr": 1,
    "tolerance_grad": 1e-7,
    "tolerance_change": 1e-10,
    "history_size": 20,
    "line_search_fn": "strong_wolfe",
}
MIN_PER_IMAGE = 16  # a streamed sample takes at least this many patches of each image it reads


def _identity(feats: torch.Tensor) -> torch.Tensor:
    return feats.float()


class StreamedFeatures:
    """A training split whose backbone features are computed when they are read, batch by batch, and never held whole.

    Reads what the split's feature cache would hold (`hpnb.features.compute_features`: fp16 features of the backbone
    run at `hpnb.features.resolve_precision`, float64 on the CPU, half-precision autocast on a GPU), on the backbone's
    device; images are decoded by a DataLoader (`workers` processes: by default none on the CPU, up to 8 beside an
    accelerator). `tag` names the split in the file names of fitted baselines (`hpnb.evaluate._memo`)."""

    def __init__(self, backbone, dataset, precision: str = "auto", workers: int | None = None, tag: str | None = None):
        from hpnb.features import resolve_precision

        if len(dataset) == 0:
            raise ValueError(f"{type(dataset).__name__} is empty: expected a training split with at least one image")
        self.backbone, self.dataset, self.tag = backbone, dataset, tag
        self.device = next(backbone.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.net = copy.deepcopy(backbone).double() if self.precision == "float64" else backbone
        cores = os.cpu_count() or 1
        self.workers = workers if workers is not None else (min(8, cores) if on_accelerator(self.device) else 0)
        h, w = dataset[0]["image"].shape[-2:]
        self.grid = (h // backbone.patch_size, w // backbone.patch_size)
        self.dim = backbone.embed_dim

    def __len__(self) -> int:
        return len(self.dataset)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """fp16 features (B, C, h, w) on the backbone's device of normalised images (B, 3, H, W)."""
        dtype = torch.float64 if self.precision == "float64" else None
        half = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.precision)
        cast = autocast(self.device, dtype=half) if half is not None else nullcontext()
        with torch.no_grad(), cast:
            return self.net(images.to(device=self.device, dtype=dtype, non_blocking=True), attention=False).feats.half()

    def batches(self, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features on the backbone's device, CPU labels) of each batch of image indices, in the given order."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in index_batches],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for items in loader:
            yield self._forward(items["image"]), items["label"]


Source = FeatureSet | StreamedFeatures


def read_batches(source: Source, index_batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features, labels) of each batch of image indices: cached rows of a FeatureSet, or computed ones."""
    if isinstance(source, StreamedFeatures):
        yield from source.batches(index_batches)
    else:
        for idx in index_batches:
            yield source.feats[idx], source.labels[idx]


def source_device(source: Source) -> torch.device:
    """Where a source's features are: a FeatureSet's tensor, or the streaming backbone's device."""
    return source.device if isinstance(source, StreamedFeatures) else source.feats.device


def patch_count(source: Source) -> int:
    """The number of patches of a training split (images × grid)."""
    h, w = source.grid
    return len(source) * h * w


def needs_sample(source: Source) -> bool:
    """Whether the converged probes fit a sample (`patch_sample`) rather than every patch: a streamed split, or more
    than `WHOLE_PATCHES` patches."""
    return isinstance(source, StreamedFeatures) or patch_count(source) > WHOLE_PATCHES


def _fit_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU (the fitted probe, and every score printed from it, then do not depend on the thread
    count), float32 on an accelerator."""
    return torch.float64 if device.type == "cpu" else torch.float32


def code_set(fs: FeatureSet, codes: Codes | None = None, batch: int = 16, device=None) -> FeatureSet:
    """The same split with its features replaced by `codes(features)` (in the dtype `codes` returns; fp32 raw
    features when codes is None), computed on `device` (default: where the features are) and left there."""
    codes = codes or _identity
    device = fs.feats.device if device is None else torch.device(device)
    with torch.no_grad():
        out = torch.cat([codes(fs.feats[i : i + batch].to(device).float()) for i in range(0, len(fs), batch)])
    return FeatureSet(feats=out, labels=fs.labels, images=fs.images, names=fs.names, meta=dict(fs.meta))


def linear_probe_init(dim: int, n_classes: int, gen: torch.Generator) -> nn.Conv2d:
    """nn.Conv2d(dim, n_classes, 1) at PyTorch's default init, drawn from `gen` (CPU) instead of the global RNG: the
    same values as `nn.Conv2d` after `torch.manual_seed(s)` when gen is seeded with s, and the global RNG untouched."""
    with torch.device("meta"):  # built without drawing, then filled from gen as Conv2d.reset_parameters fills it
        linear = nn.Conv2d(dim, n_classes, 1)
    linear = linear.to_empty(device="cpu")
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(dim)  # 1 / sqrt(fan_in) of a 1×1 kernel
        nn.init.uniform_(linear.bias, -bound, bound, generator=gen)
    return linear


def cluster_probe_init(dim: int, n_classes: int, gen: torch.Generator) -> ClusterProbe:
    """ClusterProbe(dim, n_classes) with its N(0, 1) centroids drawn from `gen` (CPU), the global RNG untouched."""
    with torch.device("meta"):
        cluster = ClusterProbe(dim, n_classes)
    cluster = cluster.to_empty(device="cpu")
    with torch.no_grad():
        cluster.centroids.copy_(torch.randn(n_classes, dim, generator=gen))
    return cluster


def _targets(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    labels = labels.long()
    return torch.where((labels >= 0) & (labels < n_classes), labels, torch.full_like(labels, IGNORE))


def online_batches(n: int, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The image indices of `steps` batches in the trainer's epoch order: a permutation per epoch, seeded by
    (seed, epoch), cut into `n // batch` batches (the remainder of each epoch dropped)."""
    per_epoch = max(1, n // batch)
    out, order = [], None
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        if i == 0 or order is None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(order[i * batch : (i + 1) * batch])
    return out


def fit_online_probes(
    fs: Source,
    n_classes: int,
    steps: int,
    batch: int = 8,
    linear_lr: float = 1e-3,
    cluster_lr: float = 5e-3,
    seed: int = 0,
    codes: Codes | None = None,
    device=None,
) -> tuple[nn.Conv2d, torch.Tensor]:
    """Protocol (i) without HP: the official online probes trained alone for `steps` batches on frozen features
    (or frozen codes). Same probes, losses, optimisers, learning rates and batch size as during HP training; the
    batches follow the trainer's epoch order and are read one at a time. Trained on `device` (default: where the
    features are); returns (linear probe, cluster centroids) there.

    The initial values are HPModel's after `torch.manual_seed(seed)`, drawn from a generator of this call (the global
    RNG is left as it was). A batch without a labelled pixel gives the linear probe no step (its cross-entropy would
    be 0/0: NaN, which would poison Adam for good): its weights and Adam moments stay as they were; the cluster
    probe, whose loss does not read labels, trains on the batch as on any other."""
    codes = codes or _identity
    device = source_device(fs) if device is None else torch.device(device)
    gen = torch.Generator().manual_seed(seed)  # the linear init, then the N(0, 1) centroids, as HPModel draws them
    with torch.no_grad():
        first = fs.feats[:1] if isinstance(fs, FeatureSet) else torch.zeros(1, fs.dim, *fs.grid)
        dim = codes(first.to(device).float()).shape[1]
    linear = linear_probe_init(dim, n_classes, gen)
    cluster = cluster_probe_init(dim, n_classes, gen)
    dtype = _fit_dtype(device)  # drawn on the CPU, then moved: the same initial values on every device
    linear, cluster = linear.to(device=device, dtype=dtype), cluster.to(device=device, dtype=dtype)
    opt_linear = torch.optim.Adam(linear.parameters(), lr=linear_lr)
    opt_cluster = torch.optim.Adam(cluster.parameters(), lr=cluster_lr)
    for feats, labels in read_batches(fs, online_batches(len(fs), steps, batch, seed)):
        with torch.no_grad():
            z = codes(feats.to(device, non_blocking=True).float()).to(dtype)
        labels = _targets(labels.to(device, non_blocking=True), n_classes)
        labelled = bool((labels != IGNORE).any())
        if labelled:
            logits = F.interpolate(linear(z), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE) + cluster.loss(z)
        else:  # no labelled pixel: no linear step
            loss = cluster.loss(z)
        opt_linear.zero_grad()
        opt_cluster.zero_grad()
        loss.backward()
        if labelled:
            opt_linear.step()
        opt_cluster.step()
    return linear.float().eval(), cluster.centroids.detach().float()


def patch_targets(labels: torch.Tensor, grid: tuple[int, int], n_classes: int, chunk: int = 16) -> torch.Tensor:
    """The share of each class among the labelled pixels of each patch: (n, H, W) -> (n, C, h, w); 0 where none.
    Computed `chunk` images at a time (the one-hot maps of a whole split would take C + 1 floats per pixel)."""
    out = []
    for i in range(0, len(labels), chunk):
        target = _targets(labels[i : i + chunk], n_classes).clamp_min(-1) + 1
        one_hot = F.one_hot(target, n_classes + 1).permute(0, 3, 1, 2).float()
        counts = F.adaptive_avg_pool2d(one_hot, grid)[:, 1:]  # drop the ignore channel
        out.append(counts / counts.sum(1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out) if out else torch.zeros(0, n_classes, *grid)


@dataclass
class PatchSample:
    """Patches drawn uniformly from a training split, on the CPU: backbone features (P, C) fp16 and each patch's
    class shares (P, n_classes) (`patch_targets`; a row of zeros where no pixel is labelled)."""

    feats: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.feats)

    def codes(self, codes: Codes | None, device, batch: int = 65_536) -> torch.Tensor:
        """`codes` of every sampled patch (P, K) on `device`, each patch passed as a 1×1 map: exact for hpnb's codes,
        whose heads are 1×1 convolutions (a patch's code depends on that patch only)."""
        codes = codes or _identity
        with torch.no_grad():
            parts = [codes(f.to(device).float()[:, :, None, None])[:, :, 0, 0] for f in self.feats.split(batch)]
        return torch.cat(parts)


def patch_sample(
    source: Source,
    n_classes: int,
    max_points: int | None = None,
    seed: int = 0,
    batch: int = 32,
    progress: bool = False,
) -> PatchSample:
    """`max_points` patches drawn uniformly from a training split in one pass over a random subset of its images:
    at least `MIN_PER_IMAGE` distinct patches of each image read, as many images as that takes (every image of a
    small split); `max_points` defaults to `WHOLE_PATCHES`. Memory: the sample, and one batch of features at a time."""
    max_points = WHOLE_PATCHES if max_points is None else max_points
    h, w = source.grid
    n, per_grid = len(source), h * w
    gen = torch.Generator().manual_seed(seed)
    n_images = min(n, max(1, math.ceil(max_points / MIN_PER_IMAGE)))
    per_image = min(per_grid, math.ceil(max_points / n_images))
    chosen = torch.randperm(n, generator=gen)[:n_images].sort().values  # read in index order
    feats, targets = [], []
    batches = list(chosen.split(batch))
    for f, labels in tqdm(read_batches(source, batches), total=len(batches), desc="sample", disable=not progress):
        pick = torch.rand(len(f), per_grid, generator=gen).argsort(1)[:, :per_image]  # distinct patches per image
        f = f.cpu().half().flatten(2)  # (b, C, h·w)
        t = patch_targets(labels, (h, w), n_classes).flatten(2)  # (b, n_classes, h·w)
        feats.append(f.gather(2, pick[:, None].expand(-1, f.shape[1], -1)).transpose(1, 2).reshape(-1, f.shape[1]))
        targets.append(t.gather(2, pick[:, None].expand(-1, n_classes, -1)).transpose(1, 2).reshape(-1, n_classes))
    feats, targets = torch.cat(feats), torch.cat(targets)
    keep = torch.randperm(len(feats), generator=gen)[:max_points]  # shuffled: any prefix is a uniform sample too
    return PatchSample(feats=feats[keep], targets=targets[keep])


def _whole_rows(
    fs: FeatureSet, n_classes: int, codes: Codes | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every labelled patch of an in-memory split: codes (P, D) and class shares (P, C) on `device`."""
    data = code_set(fs, codes, device=device)
    x = data.feats.permute(0, 2, 3, 1).reshape(-1, data.feats.shape[1])  # (P, D)
    y = patch_targets(fs.labels, data.grid, n_classes).permute(0, 2, 3, 1).reshape(-1, n_classes).to(x.device)
    keep = y.sum(1) > 0
    dtype = _fit_dtype(x.device)
    return x[keep].to(dtype), y[keep].to(dtype)


def _sampled_rows(sample: PatchSample, codes: Codes | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled patches of a sample: codes (P, D) and class shares (P, C) on `device`."""
    keep = sample.targets.sum(1) > 0
    x = PatchSample(sample.feats[keep], sample.targets[keep]).codes(codes, device)
    dtype = _fit_dtype(x.device)
    return x.to(dtype), sample.targets[keep].to(device=x.device, dtype=dtype)


def fit_linear_converged(
    fs: Source,
    n_classes: int,
    codes: Codes | None = None,
    max_iter: int | None = None,
    weight_decay: float | None = None,
    device=None,
    sample: PatchSample | None = None,
    seed: int = 0,
    record: dict | None = None,
) -> nn.Conv2d:
    """Protocol (ii): a linear probe fitted to convergence on frozen features (or codes): full-batch L-BFGS on the
    cross-entropy against each patch's pixel-exact class shares (soft targets), with a small L2 penalty so that the
    optimum exists; evaluated like any probe (logits bilinearly upsampled to the labels).

    Fitted on every labelled patch of an in-memory split up to `WHOLE_PATCHES` patches, else on `sample` (drawn here
    with `seed` when not given: `patch_sample`); on `device` (default: where the features are), returned there.
    `max_iter` defaults to `CONVERGED_ITERS`, `weight_decay` to `WEIGHT_DECAY`. `record`, when given, is filled with
    how L-BFGS stopped (`lbfgs_record`); one line on stderr says when it stopped at its cap unconverged."""
    device = source_device(fs) if device is None else torch.device(device)
    if sample is None and not needs_sample(fs):
        x, y = _whole_rows(fs, n_classes, codes, device)
    else:
        x, y = _sampled_rows(sample or patch_sample(fs, n_classes, seed=seed), codes, device)
    wd = WEIGHT_DECAY if weight_decay is None else weight_decay
    probe, fit = _softmax_regression(x, y, max_iter or CONVERGED_ITERS, wd)
    warn_unconverged(fit, raw=codes is None)
    if record is not None:
        record.update(fit)
    return probe


def _softmax_regression(x: torch.Tensor, y: torch.Tensor, max_iter: int, weight_decay: float) -> tuple[nn.Conv2d, dict]:
    """The L-BFGS fit of `fit_linear_converged` on rows x (P, D) and soft targets y (P, C) (their dtype and device),
    folded into a 1×1 fp32 convolution on x's device, and how L-BFGS stopped (`lbfgs_record`). x is standardised in
    place (the callers pass fresh rows)."""
    n_classes, dtype = y.shape[1], x.dtype
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)  # standardise for a well-conditioned problem, fold back below
    xs = x.sub_(mean).div_(std)
    weight = torch.zeros(n_classes, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, **LBFGS)

    def closure():
        opt.zero_grad()
        loss = -(y * F.log_softmax(xs @ weight.T + bias, dim=1)).sum(1).mean() + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    fit = lbfgs_record(opt, closure)
    probe = nn.utils.skip_init(nn.Conv2d, x.shape[1], n_classes, 1, device=x.device)  # no draw: filled below
    with torch.no_grad():  # logits = ((x - mean) / std) W^T + b  ==  x (W / std)^T + (b - W·mean/std)
        w = weight / std
        probe.weight.copy_(w[:, :, None, None])
        probe.bias.copy_(bias - w @ mean)
    return probe.eval(), fit


def lbfgs_record(opt: torch.optim.LBFGS, closure: Callable[[], torch.Tensor]) -> dict:
    """How one `opt.step(closure)` of L-BFGS stopped, JSON-ready. Evaluates the closure once more, at the fitted
    parameters (their values do not change): `loss`; `grad_max`, the largest |gradient| there, which torch compares
    with `tolerance_grad`; `loss_change`, the change of the loss over the last iteration, and `step_max`, the largest
    move of a parameter in it, both compared with `tolerance_change`; `iterations` of `max_iter`, `evaluations` of
    `max_eval`; `stop`, the rule that ended the step in torch's order ("gradient", "iteration cap", "evaluation cap",
    "step", "loss change", "directional derivative"); `converged`: a tolerance was met (False: stopped at a cap)."""
    group, params = opt.param_groups[0], opt.param_groups[0]["params"]
    state = opt.state[params[0]]
    iters, evals = state.get("n_iter", 0), state.get("func_evals", 0)
    tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
    with torch.enable_grad():  # as LBFGS.step calls it: a caller's no_grad would leave no gradient to read
        loss = float(closure().detach())
    grad = max(float(p.grad.abs().max()) for p in params)
    change = abs(loss - state["prev_loss"]) if "prev_loss" in state else None
    step = float(state["d"].mul(state["t"]).abs().max()) if "d" in state else None
    if iters == 0 or (iters < group["max_iter"] and evals < group["max_eval"] and grad <= tol_grad):
        stop = "gradient"
    elif iters >= group["max_iter"]:
        stop = "iteration cap"
    elif evals >= group["max_eval"]:
        stop = "evaluation cap"
    elif step is not None and step <= tol_change:
        stop = "step"
    elif change is not None and change < tol_change:
        stop = "loss change"
    else:
        stop = "directional derivative"  # the descent direction's slope fell under tolerance_change
    met = grad <= tol_grad or (change is not None and change < tol_change) or (step is not None and step <= tol_change)
    return {
        "method": "L-BFGS",
        "iterations": iters,
        "max_iter": group["max_iter"],
        "evaluations": evals,
        "max_eval": group["max_eval"],
        "loss": loss,
        "grad_max": grad,
        "tolerance_grad": tol_grad,
        "loss_change": change,
        "step_max": step,
        "tolerance_change": tol_change,
        "stop": stop,
        "converged": met or not stop.endswith("cap"),
    }


def warn_unconverged(record: dict, raw: bool) -> None:
    """One line on stderr when a converged probe's fit (its record) stopped at its cap unconverged, as hpnb's other
    runtime warnings (no file and line number: a notebook's output stays the same when the code moves). `raw`: the
    probe was fitted on the raw features (else on codes). A memoised baseline says it again when read back
    (`hpnb.evaluate._memo`), so that a notebook prints the same whether its baselines were fitted or loaded."""
    if record["converged"]:
        return
    features = "raw features" if raw else "codes"
    # the tolerances, not the measured gradient or loss change: those differ in their last digits between CPUs and
    # thread counts, and this line is part of committed notebook outputs; the measured values are in the record
    if record["method"] == "L-BFGS":
        what = f"the converged linear probe of the {features}"
        capped = record["stop"] == "iteration cap"
        cap = f"{record['max_iter']} iterations" if capped else f"{record['max_eval']} function evaluations"
        detail = f"largest |gradient| above {record['tolerance_grad']:.0e}"
        if record["loss_change"] is not None:
            detail += f", last loss change above {record['tolerance_change']:.0e}"
    else:
        what, cap, change = f"k-means of the {features}", f"{record['max_iter']} iterations", record["objective_change"]
        detail = "one iteration only" if change is None else f"relative objective change above {record['tol']:.0e}"
    detail += "; the measured values are in the fit's record (eval_<split>.json: protocols.converged.convergence)"
    print(f"warning: {what} stopped at its cap of {cap} unconverged ({detail})", file=sys.stderr)


def fit_kmeans(
    fs: Source,
    n_clusters: int,
    codes: Codes | None = None,
    seed: int = 0,
    max_points: int | None = None,
    device=None,
    sample: PatchSample | None = None,
    record: dict | None = None,
) -> torch.Tensor:
    """Protocol (ii): k-means centroids (cosine, k-means++ seeding, to convergence: at most `KMEANS_ITERS`
    iterations, tolerance `KMEANS_TOL`) on frozen features or codes, of `max_points` (default `KMEANS_PATCHES`)
    patches drawn uniformly: from the whole in-memory split up to `WHOLE_PATCHES` patches, else the first
    `max_points` of `sample` (drawn here when not given). On `device` (default: where the features are). `record`,
    when given, is filled with how k-means stopped (`hpnb.baseline.kmeans_record`); one line on stderr says when it
    stopped at its cap unconverged."""
    device = source_device(fs) if device is None else torch.device(device)
    max_points = KMEANS_PATCHES if max_points is None else max_points
    if sample is None and not needs_sample(fs):
        x = sample_patches(code_set(fs, codes, device=device), max_points, seed)
    else:
        sample = sample or patch_sample(fs, 1, seed=seed)
        x = F.normalize(PatchSample(sample.feats[:max_points], sample.targets[:max_points]).codes(codes, device), dim=1)
    fit = {}
    centroids = kmeans(x, n_clusters, iters=KMEANS_ITERS, seed=seed, tol=KMEANS_TOL, record=fit)
    warn_unconverged(fit, raw=codes is None)
    if record is not None:
        record.update(fit)
    return centroids


def cone_stats(x: torch.Tensor, n_centroids: int, seed: int = 0, max_points: int = 20_000) -> dict:
    """Why an online cluster probe can leave clusters empty, measured on patch vectors `x` (n, D) (raw features or
    codes). The probe compares directions (it normalises codes and centroids), so only the direction of its
    N(0, 1) centroids matters. Returns the mean cosine between two patches (how narrow the cone the patches fill
    is), the mean |cosine| between a random centroid direction and a patch, and, at the start, how many centroids
    are nearest to at least one patch and the share of patches the most popular centroid takes. A centroid that is
    nearest to no patch gets no gradient from the probe's loss, so it can stay empty for good."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(x.double(), dim=1)
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=g)[:max_points]]
    centroids = F.normalize(torch.randn(n_centroids, x.shape[1], generator=g, dtype=torch.float64), dim=1)
    pairs = torch.randint(0, len(x), (2, 20_000), generator=g)
    won = torch.bincount((x @ centroids.T).argmax(1), minlength=n_centroids)
    return {
        "patch_cos": float((x[pairs[0]] * x[pairs[1]]).sum(1).mean()),
        "centroid_cos": float((x @ centroids.T).abs().mean()),
        "winners_at_start": int((won > 0).sum()),
        "top_share": float(won.max() / len(x)),
    }
