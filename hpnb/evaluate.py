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
from hpnb.utils import HpnbError


@dataclass
class Predictor:
    """What evaluation needs: backbone features -> codes, a 1×1 linear probe on codes, cluster centroids."""

    codes: Callable[[torch.Tensor], torch.Tensor]
    linear: nn.Module
    centroids: torch.Tensor
    name: str = "model"
    convergence: dict = field(default_factory=dict)  # converged probes: {"linear": ..., "kmeans": ...} fit records

    @property
    def device(self) -> torch.device:
        """Where the predictor computes (its centroids' device, the model's): features are moved there per batch."""
        return self.centroids.device


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

    Give it the same budget (steps, batch, lr) as the HP run's online probe for a like-for-like comparison. The init
    and the batch order come from generators of this call, seeded with `seed` (the global RNG is left as it was). A
    batch without a labelled pixel counts as a step but makes none (its cross-entropy would be 0/0: NaN, which would
    poison Adam for good): the weights and Adam moments stay as they were."""
    from hpnb.probes import linear_probe_init

    gen = torch.Generator().manual_seed(seed)
    device = device or torch.device("cpu")
    probe = linear_probe_init(fs.feats.shape[1], n_classes, torch.Generator().manual_seed(seed)).to(device)
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
            if not (labels != IGNORE).any():
                continue  # no labelled pixel: no step
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
    device=None,
) -> Predictor:
    """The baseline: k-means centroids (on L2-normalised features) and a linear probe, both on the frozen backbone,
    fitted on `device` (default: the CPU)."""
    from hpnb.baseline import kmeans, sample_patches

    device = torch.device("cpu") if device is None else torch.device(device)
    centroids = kmeans(sample_patches(train, 100_000, seed).to(device), n_classes, seed=seed)
    probe = fit_linear_probe(
        train, n_classes, steps=probe_steps, lr=probe_lr, batch=probe_batch, seed=seed, device=device
    )
    return Predictor(codes=lambda f: f.float(), linear=probe, centroids=centroids, name="k-means")


def cluster_scores(codes: torch.Tensor, centroids: torch.Tensor, size: tuple, cosine: bool = True) -> torch.Tensor:
    """Per-pixel cluster scores at `size`: codes (B, K, h, w), unit centroids (n, K) -> (B, n, H, W).

    `cosine`: cos(up(codes), c), the official scores (the CRF's input). Otherwise up(codes)·c, which has the same
    argmax (|up(codes)| is one positive number per pixel) and, bilinear upsampling being linear, equals up(codes·c):
    the dot products are taken on the patch grid and n maps are upsampled instead of K (what the scores cost)."""
    dots = F.interpolate(
        torch.einsum("bkhw,ck->bchw", codes, centroids), size=size, mode="bilinear", align_corners=False
    )
    if not cosine:
        return dots
    up = F.interpolate(codes, size=size, mode="bilinear", align_corners=False)
    return dots / up.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class EvalResult:
    """Scores (percent) per head, before and after the CRF, plus matched confusions and a few predictions."""

    scores: dict  # {"cluster": Scores, "linear": Scores, "cluster+crf": ..., "linear+crf": ...}
    confusion: dict  # name -> (C, C) matched confusion (rows predicted class, cols GT)
    samples: dict = field(default_factory=dict)  # name -> (n, H, W) predictions of the first images (matched)
    mappings: dict = field(default_factory=dict)  # name -> cluster -> class map (identity for linear heads)
    empty_clusters: int = 0  # cluster ids that no labelled pixel of the split was assigned to (dead centroids)

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
    """Score a predictor on a cached split: cluster (Hungarian) and linear, optionally + dense CRF.

    The split's cached features stay on the CPU; each batch is moved to the predictor's device (`Predictor.device`),
    and what leaves it for the CRF, the confusion counts and the kept samples comes back to the CPU."""
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
    device = pred.device

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
        feats = fs.feats[start : start + batch].to(device, non_blocking=True).float()
        labels = fs.labels[start : start + batch].long()  # CPU: `confusion_matrix` counts on the predictions' device
        size = tuple(labels.shape[-2:])
        codes = pred.codes(feats)  # (b, K, h, w)
        lin_grid = pred.linear(codes)  # linear probe commutes with bilinear upsampling (weights sum to 1)
        lin = F.interpolate(lin_grid, size=size, mode="bilinear", align_corners=False)
        cos = cluster_scores(codes, centroids, size, cosine=crf)  # the CRF needs true cosines, argmax does not
        for name, logits in (("cluster", cos), ("linear", lin)):
            p = logits.argmax(1)
            metrics[name].update(p, labels)
            for j in range(len(p)):
                if start + j < keep:
                    raw[name].append(p[j].cpu())
        if crf:
            for j in range(len(feats)):
                cluster_logp = torch.log_softmax(2 * cos[j], dim=0).half().cpu().numpy()  # official alpha = 2
                lin_logits = lin_grid[j].cpu().numpy()
                pending.append((fs.images[start + j].numpy(), cluster_logp, lin_logits, labels[j], start + j))
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
    empty = int((metrics["cluster"].conf.sum(1) == 0).sum())
    return EvalResult(scores=scores, confusion=confusion, samples=samples, mappings=mappings, empty_clusters=empty)


# ----------------------------------------------------------------------------------------------------------
# Runs: load, evaluate beside the k-means baseline, predict one image
# ----------------------------------------------------------------------------------------------------------


PROTOCOLS = {
    "online": "(i) paper protocol: the online linear and cluster probes, trained for the same steps with the same "
    "settings, on HP's codes (during training) and on the raw backbone features (alone, afterwards)",
    "converged": "(ii) converged: k-means (k = classes) and a linear probe fitted to convergence, on frozen HP codes "
    "and on the raw backbone features",
}
METHODS = ("HP", "raw features")


def _memo(key: str, make):
    """(linear probe, centroids, fit records) of a baseline fitted on raw features, cached on disk: the raw rows are
    the same for every run of a sweep that shares the data and every setting of the fit (`_memo_key`). Saved from
    the CPU, read back there (`protocol_predictors` moves them to the model's device)."""
    from hpnb.probes import warn_unconverged
    from hpnb.utils import atomic_save, cache_dir

    path = cache_dir("baselines") / f"{key}.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        centroids, records = state.pop("centroids"), state.pop("convergence", {})
        for record in records.values():  # what the fit said, said again: the same output fitted or loaded
            warn_unconverged(record, raw=True)
        probe = nn.utils.skip_init(nn.Conv2d, state["weight"].shape[1], state["weight"].shape[0], 1)  # no draw
        probe.load_state_dict(state)
        return probe.eval(), centroids, records
    probe, centroids, records = make()
    state = {k: v.cpu() for k, v in probe.state_dict().items()}
    atomic_save({**state, "centroids": centroids.cpu(), "convergence": records}, path)
    return probe, centroids, records


def baseline_settings(n_classes: int, cfg, steps: int, device: torch.device, sampled: bool) -> dict:
    """{protocol: every setting that changes the raw features' fit} (with the split, the memo's key: `_memo_key`):
    `hpnb.probes.PROBE_VERSION` for what the code fixes (optimisers, losses, init), then the budget, the seed, the
    device type (float64 fits on the CPU, float32 elsewhere) and, for protocol (ii), the probes' caps, tolerances
    and sample sizes, read from `hpnb.probes` when called (as the fits read them)."""
    import hpnb.probes as probes

    common = {"version": probes.PROBE_VERSION, "classes": n_classes, "seed": cfg.seed, "device": device.type}
    online = {"steps": steps, "batch": cfg.batch_size, "linear_lr": cfg.linear_lr, "cluster_lr": cfg.cluster_lr}
    sample = {"whole_patches": probes.WHOLE_PATCHES, "min_per_image": probes.MIN_PER_IMAGE} if sampled else None
    converged = {
        "sample": sample,
        "linear": {"max_iter": probes.CONVERGED_ITERS, "weight_decay": probes.WEIGHT_DECAY, **probes.LBFGS},
        "kmeans": {"points": probes.KMEANS_PATCHES, "max_iter": probes.KMEANS_ITERS, "tol": probes.KMEANS_TOL},
    }
    return {"online": {**common, **online}, "converged": {**common, **converged}}


def _memo_key(tag: str, protocol: str, settings: dict) -> str:
    """The file name of a memoised baseline: the split and seed (`tag`), the protocol, the probe code version and a
    digest of every setting of the fit (`baseline_settings`), then the device type off the CPU."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    on = "" if settings["device"] == "cpu" else f"_{settings['device']}"
    return f"{tag}_{protocol}_v{settings['version']}_{digest}{on}"


def _source_tag(train) -> str | None:
    """The name of a training split in the file names of fitted baselines: its cache file's, or a streamed split's."""
    from hpnb.probes import StreamedFeatures

    if isinstance(train, StreamedFeatures):
        return train.tag
    return train.path.stem if train.path is not None else None


def protocol_predictors(
    model,
    train,
    n_classes: int,
    cfg,
    steps: int,
    progress: bool = False,
    protocols: tuple[str, ...] = ("online", "converged"),
    raw_features: bool = True,
) -> dict:
    """{protocol: {method: Predictor}} for the two protocols, HP's codes against the raw backbone features.

    (i) online: HP's own online probes (from its checkpoint, trained `steps` steps) against the same probes trained
    alone for `steps` steps on the raw features; (ii) converged: k-means and a converged linear probe on frozen HP
    codes against the same on the raw features (`hpnb.probes`). `train`: a FeatureSet, or `StreamedFeatures` for a
    split too large for memory (the converged probes then fit one shared uniform sample of its patches). Every probe
    is fitted on the model's device, and every predictor computes there. `protocols` and `raw_features=False` leave
    out what a comparison does not need (e.g. notebook 06's run of (a) against (g) under (ii) only)."""
    import copy
    import functools

    if not protocols or set(protocols) - set(PROTOCOLS):
        raise HpnbError(f"protocols must be a non-empty subset of {tuple(PROTOCOLS)}, found {tuple(protocols)}")

    from hpnb.probes import fit_kmeans, fit_linear_converged, fit_online_probes, needs_sample, patch_sample

    model.eval()
    device = next(model.parameters()).device
    hp_codes = lambda f: model.heads.seg(f.float())  # noqa: E731  (eval mode: no dropout)
    raw = lambda f: f.float()  # noqa: E731
    # the converged probes are fitted on codes from a float64 copy of S on the CPU, as the feature caches are
    # computed: the fit, and the scores printed from it, then do not depend on the CPU or its thread count
    cpu = device.type == "cpu"
    seg64 = copy.deepcopy(model.heads.seg).double().eval() if cpu else model.heads.seg
    fit_codes = (lambda f: seg64(f.double())) if cpu else hp_codes  # noqa: E731
    sampled = needs_sample(train)

    @functools.cache
    def sample():  # one pass over the split, shared by the four converged fits; none for a split fitted whole
        return patch_sample(train, n_classes, seed=cfg.seed, progress=progress) if sampled else None

    name = _source_tag(train)
    tag = f"{name}_seed{cfg.seed}" if name is not None else None
    settings = baseline_settings(n_classes, cfg, steps, device, sampled)
    fit = settings["converged"]  # the converged fits take their settings from the dict that keys them

    def raw_online():
        linear, centroids = fit_online_probes(
            train, n_classes, steps, cfg.batch_size, cfg.linear_lr, cfg.cluster_lr, cfg.seed, device=device
        )
        return linear, centroids, {}

    def converged(codes) -> tuple:  # (linear probe, centroids, {"linear": record, "kmeans": record})
        records = {"linear": {}, "kmeans": {}}
        linear = fit_linear_converged(
            train,
            n_classes,
            codes,
            max_iter=fit["linear"]["max_iter"],
            weight_decay=fit["linear"]["weight_decay"],
            device=device,
            sample=sample(),
            record=records["linear"],
        )
        points = fit["kmeans"]["points"]
        centroids = fit_kmeans(
            train, n_classes, codes, cfg.seed, points, device=device, sample=sample(), record=records["kmeans"]
        )
        return linear, centroids, records

    def on_device(fitted: tuple) -> tuple:  # a baseline read back from disk is on the CPU
        return fitted[0].to(device), fitted[1].to(device), fitted[2]

    def hp_converged():
        linear, centroids, records = converged(fit_codes)
        return Predictor(hp_codes, linear, centroids, name="HP", convergence=records)

    def baseline(protocol: str, make) -> Predictor:
        linear, centroids, records = on_device(
            _memo(_memo_key(tag, protocol, settings[protocol]), make) if tag else make()
        )
        return Predictor(raw, linear, centroids, name="raw features", convergence=records)

    if not raw_features:  # HP's rows only: the baselines are neither fitted nor read
        return {p: {"HP": model_predictor(model) if p == "online" else hp_converged()} for p in protocols}
    out = {}
    if "online" in protocols:
        out["online"] = {"HP": model_predictor(model), "raw features": baseline("online", raw_online)}
    if "converged" in protocols:
        raw_row = baseline("converged", lambda: converged(None))
        out["converged"] = {"HP": hp_converged(), "raw features": raw_row}
    return out


@dataclass
class RunEvaluation:
    """A run evaluated on one split: the summary written to eval_<split>.json, the results per protocol and method,
    the split's cached features (images and labels, for figures) and the run's config."""

    summary: dict
    results: dict  # {protocol: {method: EvalResult}}
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
    device: str | torch.device | None = None,
    protocols: tuple[str, ...] = ("online", "converged"),
    raw_features: bool = True,
) -> RunEvaluation:
    """Evaluate a run's selected checkpoint on a split (default: the preset's test split) under both protocols,
    HP's codes beside the raw backbone features (`PROTOCOLS`); write eval_<split>.json and cluster_mapping.json.

    The raw features' online probes train for the steps of the HP checkpoint they are compared with
    (`hpnb.runs.selected_step`). `baseline=False` scores HP's online probes only; `protocols` and
    `raw_features=False` keep only those protocols and HP's rows (`protocol_predictors`). The CRF (optional) refines the
    protocol (i) rows, as in the paper. Everything runs on `device` (default: `run_device`, the GPU when there is
    one); the split's features are cached on the CPU, the baseline's training features streamed when the split is
    large (`baseline_features`). Figures and the Markdown report: `hpnb.report.evaluate_run`."""
    import json
    from pathlib import Path

    from hpnb.backbones import load_backbone
    from hpnb.crf import resolve_crf
    from hpnb.runs import dataset_for, selected_step

    crf = resolve_crf(crf)  # without pydensecrf: one line, then no "+crf" heads
    run = Path(run)
    cfg, model = load_run(run, which)
    split = split or cfg.test_split
    device = run_device(cfg) if device is None else torch.device(device)
    model.to(device)
    backbone = load_backbone(cfg.backbone, weights=cfg.backbone_weights, device=device)
    fs = extract_features_for(
        backbone, dataset_for(cfg, split, cfg.val_res, cfg.n_val), progress, precision=cfg.feature_precision
    )
    n_classes, classes = model.n_classes, list(model.classes)
    steps = selected_step(run, which)
    if baseline:
        train = baseline_features(backbone, dataset_for(cfg, cfg.train_split, cfg.val_res, cfg.n_train), cfg, progress)
        predictors = protocol_predictors(
            model, train, n_classes, cfg, steps, progress=progress, protocols=protocols, raw_features=raw_features
        )
    else:
        predictors = {"online": {"HP": model_predictor(model)}}
    results = {
        protocol: {  # the CRF refines the online probes' predictions, as in the paper's tables
            m: evaluate(p, fs, n_classes, crf=crf and protocol == "online", workers=workers, progress=progress)
            for m, p in preds.items()
        }
        for protocol, preds in predictors.items()
    }
    summary = {
        "format": 2,
        "run": str(run),
        "split": split,
        "checkpoint": which,
        "checkpoint_step": steps,
        "classes": classes,
        "selection": "best on val by cluster Acc + cluster mIoU + linear Acc + linear mIoU (official rule)"
        if which == "best"
        else "last iteration",
        "protocols": {
            protocol: {
                "description": PROTOCOLS[protocol],
                "probe_steps": steps if protocol == "online" else "converged",
                "results": {
                    m: {**{h: s.as_dict() for h, s in r.scores.items()}, "empty_clusters": r.empty_clusters}
                    for m, r in by_method.items()
                },
                # protocol (ii): how each converged fit stopped, per method (hpnb.probes.lbfgs_record, kmeans_record)
                **(
                    {"convergence": {m: p.convergence for m, p in predictors[protocol].items()}}
                    if protocol == "converged"
                    else {}
                ),
            }
            for protocol, by_method in results.items()
        },
    }
    from hpnb.utils import atomic_write_text  # a run folder's files are written whole or not at all

    atomic_write_text(run / f"eval_{split}.json", json.dumps(summary, indent=2))
    if "online" in results:  # the online cluster probe's Hungarian map, which `hpnb.predict` applies
        mapping = results["online"]["HP"].mappings["cluster"].tolist()
        atomic_write_text(run / "cluster_mapping.json", json.dumps(mapping))
    return RunEvaluation(summary=summary, results=results, features=fs, cfg=cfg)


def run_device(cfg) -> torch.device:
    """Where a loaded run is evaluated and predicts: the run's configured device when this machine has it (a CUDA
    run read back on a machine without a GPU falls back), else `hpnb.utils.pick_device` ($HPNB_DEVICE, else CUDA
    when present, else the CPU)."""
    from hpnb.utils import pick_device

    wanted = getattr(cfg, "device", None)
    if wanted and (torch.device(wanted).type != "cuda" or torch.cuda.is_available()):
        return pick_device(wanted)
    return pick_device()


def baseline_features(backbone, dataset, cfg, progress: bool = True):
    """The training split the baseline's probes are fitted on: its feature cache (a FeatureSet, shared with the
    trainer's when the resolutions match) up to `hpnb.probes.WHOLE_PATCHES` patches, else `StreamedFeatures` (the
    backbone run batch by batch: the paper's training sets do not fit in memory)."""
    from hpnb.features import extract_features
    from hpnb.probes import WHOLE_PATCHES, StreamedFeatures

    h, w = dataset[0]["image"].shape[-2:]
    patches = len(dataset) * (h // backbone.patch_size) * (w // backbone.patch_size)
    if patches > WHOLE_PATCHES:
        from hpnb.features import cache_path, dataset_key, resolve_precision

        device = next(backbone.parameters()).device
        precision = resolve_precision(cfg.feature_precision, device)
        tag = cache_path(backbone, dataset_key(dataset), False, precision).stem
        return StreamedFeatures(backbone, dataset, precision, workers=cfg.workers, tag=f"{tag}_streamed")
    reuse = cfg.backbone_mode == "cache" and cfg.val_res == cfg.res  # the trainer's cache carries attention
    return extract_features(backbone, dataset, attention=reuse, progress=progress, precision=cfg.feature_precision)


def extract_features_for(backbone, dataset, progress: bool = True, precision: str = "auto"):
    """Cached features without attention (evaluation does not need it)."""
    from hpnb.features import extract_features

    return extract_features(backbone, dataset, attention=False, progress=progress, precision=precision)


def _image_cluster_scores(codes: torch.Tensor, centroids: torch.Tensor, size: tuple, cosine: bool) -> torch.Tensor:
    """`cluster_scores` of one image (1, K, h, w) -> (n, H, W), with |up(codes)| accumulated over channel chunks: a
    large photo never holds all K upsampled channels at once (K = 512 at 2 Mpx would be 4 GB)."""
    dots = F.interpolate(
        torch.einsum("bkhw,ck->bchw", codes, centroids), size=size, mode="bilinear", align_corners=False
    )
    if not cosine:
        return dots[0]
    sq = torch.zeros(1, 1, *size, dtype=codes.dtype, device=codes.device)
    for k in range(0, codes.shape[1], 16):
        up = F.interpolate(codes[:, k : k + 16], size=size, mode="bilinear", align_corners=False)
        sq += up.pow(2).sum(1, keepdim=True)
    return (dots / sq.sqrt().clamp_min(1e-12))[0]


def image_labels(image: np.ndarray, cfg, model, backbone, crf: bool = False, head: str = "cluster", mapping=None):
    """Label map (H, W) int64 of one uint8 RGB image (H, W, 3) of any size with a loaded run (cfg, model, backbone).

    The whole image is resized (not cropped) so that its shorter side is the run's `val_res` and both sides are
    multiples of the patch size; the logits (2·cosine to the centroids, or the linear probe) are upsampled back to the
    original size and, with `crf`, refined by the dense CRF on the original image. `mapping` (cluster -> class, the
    evaluation's Hungarian map) is applied to cluster ids when given."""
    from hpnb.crf import dense_crf
    from hpnb.data import normalize
    from hpnb.data.transforms import resampling, resize_image

    h, w = image.shape[:2]
    p = backbone.patch_size
    scale = cfg.val_res / min(h, w)
    nh, nw = max(p, round(h * scale / p) * p), max(p, round(w * scale / p) * p)
    resized = resize_image(image, (nw, nh), resampling(cfg.dataset))  # the resampling the run was trained with
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255
    backbone_device, device = next(backbone.parameters()).device, next(model.parameters()).device
    with torch.no_grad():  # the backbone and the heads each on their own device; the label map back on the CPU
        feats = backbone(normalize(x)[None].to(backbone_device), attention=False).feats
        codes = model.heads.seg(feats.to(device).float())
        if head == "linear":
            grid_logits = model.linear_probe(codes)
            logits = F.interpolate(grid_logits, size=(h, w), mode="bilinear", align_corners=False)[0]
        else:  # the CRF needs true cosines; the argmax alone does not (`cluster_scores`)
            logits = 2 * _image_cluster_scores(codes, F.normalize(model.cluster_probe.centroids, dim=1), (h, w), crf)
    if crf:
        labels = torch.from_numpy(dense_crf(image, torch.log_softmax(logits, 0).cpu()).argmax(0))
    else:
        labels = logits.argmax(0).cpu()
    if head == "cluster" and mapping is not None:
        labels = remap(labels, np.asarray(mapping))
    return labels.numpy()


def predict(image, run_or_checkpoint, crf: bool = True, head: str = "cluster", which: str = "best"):
    """Label map (H, W) for one RGB image of any size (uint8 array or PIL image) with a run folder or a loaded
    (cfg, model) pair (`image_labels`); cluster ids are mapped to classes with the Hungarian map saved by the
    evaluation, when there is one. Runs on the device of a loaded model, or a run folder's `run_device`. For many
    images, folders, names and overlays: `hpnb.predict`."""
    import json
    from pathlib import Path

    from hpnb.backbones import load_backbone
    from hpnb.crf import resolve_crf
    from hpnb.data.base import read_photo

    loaded = isinstance(run_or_checkpoint, tuple)
    cfg, model = run_or_checkpoint if loaded else load_run(run_or_checkpoint, which)
    device = next(model.parameters()).device if loaded else run_device(cfg)
    model.to(device)
    image = read_photo(image)  # uint8 RGB as a viewer shows it: EXIF, 16-bit and float [0, 1] images included
    backbone = load_backbone(cfg.backbone, weights=cfg.backbone_weights, device=device)
    mapping_file = None if loaded else Path(run_or_checkpoint) / "cluster_mapping.json"
    mapping = json.loads(mapping_file.read_text()) if mapping_file is not None and mapping_file.is_file() else None
    # without pydensecrf resolve_crf prints one line, then the prediction goes on without the CRF
    return image_labels(image, cfg, model, backbone, crf=resolve_crf(crf), head=head, mapping=mapping)
