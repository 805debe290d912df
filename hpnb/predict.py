"""Segment any photo with a trained run: one image of any size, or a whole folder (label PNGs, overlays, a legend).

    labels = hpnb.predict(image, "runs/mine")                     # (H, W) cluster (or class) ids of one image
    seg = hpnb.predict.Segmenter("runs/mine")                     # backbone and run loaded once, for many images
    hpnb.predict.predict_folder("runs/mine", "photos/", "out/")   # PNGs with a palette, overlays, legend.png
    python -m hpnb predict runs/mine photos/ --out out/

A whole image is resized (not cropped) so that its shorter side is the run's `val_res` and both sides are multiples
of the patch size; the cluster scores are upsampled back to the original size, and the dense CRF (when pydensecrf is
installed) refines them on the original image. Cluster names come from `names.json` in the run folder
(`name_clusters`), else "cluster k"; a labelled run maps clusters to classes with the evaluation's Hungarian map.

The module is callable: `hpnb.predict(image, run)` is `hpnb.predict.predict(image, run)`.
"""

from __future__ import annotations

import json
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpnb.utils import HpnbError, progress_bar

NAMES = "names.json"  # {"0": "sky", "3": "person", ...} in a run folder: what a person called the clusters
MAPPING = "cluster_mapping.json"  # cluster -> class, written by the evaluation of a labelled run


def cluster_names(run, classes: list[str] | None = None) -> list[str]:
    """The names of a run's clusters: `names.json` where a person named them, else the run's class names (a
    labelled run) or "cluster k"."""
    from hpnb.runs import load_run

    if classes is None:
        classes = list(load_run(run)[1].classes)
    names = list(classes)
    path = Path(run) / NAMES
    if path.is_file():
        given = json.loads(path.read_text())
        items = enumerate(given) if isinstance(given, list) else given.items()
        for key, name in items:
            k = int(str(key).replace("cluster", "").strip())
            if not 0 <= k < len(names):
                raise HpnbError(f"{path}: cluster {k} does not exist (the run has clusters 0..{len(names) - 1})")
            names[k] = str(name)
    return names


def name_clusters(run, names: dict[int, str]) -> Path:
    """Save names for some clusters ({cluster id: name}) in the run's names.json (merged with earlier names)."""
    path = Path(run) / NAMES
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved = dict(enumerate(saved)) if isinstance(saved, list) else saved
    saved.update({str(int(k)): str(v) for k, v in names.items()})
    path.write_text(json.dumps(dict(sorted(saved.items(), key=lambda kv: int(kv[0]))), indent=2))
    return path


def run_colours(cfg, n: int) -> np.ndarray:
    """(n, 3) uint8 colours of a run's clusters or classes: the toy world's palette, else hpnb's fixed one."""
    from hpnb.viz import palette

    if cfg.dataset == "toy":
        from hpnb.data.toyworld import PALETTE

        return np.asarray(PALETTE, dtype=np.uint8)
    return palette(n)


def _as_rgb(image) -> np.ndarray:
    """uint8 (H, W, 3) of a PIL image, an array (grey, RGB or RGBA) or a file path."""
    if isinstance(image, (str, Path)):
        from hpnb.data.base import read_rgb

        return read_rgb(Path(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise HpnbError(f"expected an RGB image (H, W, 3), found an array of shape {image.shape}")
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


class Segmenter:
    """A run ready to segment many images: its selected checkpoint, the backbone (loaded once), names and colours.

    Runs on `device`: by default a loaded (cfg, model) pair's device, else the run's (`hpnb.evaluate.run_device`: the
    GPU when there is one). A given backbone stays where it is (features are moved to the heads)."""

    def __init__(self, run, which: str = "best", crf: bool = True, head: str = "cluster", backbone=None, device=None):
        from hpnb.backbones import load_backbone
        from hpnb.crf import resolve_crf
        from hpnb.evaluate import run_device
        from hpnb.runs import load_run

        if head not in ("cluster", "linear"):
            raise HpnbError(f"head must be 'cluster' or 'linear', found {head!r}")
        if isinstance(run, tuple):  # (cfg, model) already loaded
            self.run, (self.cfg, self.model) = None, run
        else:
            self.run = Path(run)
            self.cfg, self.model = load_run(self.run, which)
        self.labelled = _labelled(self.run)
        if head == "linear" and not self.labelled:
            raise HpnbError(
                "this run was trained without labels, so its linear probe learned nothing; use head='cluster' "
                "(python -m hpnb predict RUN IMAGE --head cluster)"
            )
        self.head, self.crf = head, resolve_crf(crf)
        if device is not None:
            self.device = torch.device(device)
        elif self.run is None:
            self.device = next(self.model.parameters()).device
        else:
            self.device = run_device(self.cfg)
        self.model.to(self.device)
        self.backbone = backbone or load_backbone(
            self.cfg.backbone, weights=self.cfg.backbone_weights, device=self.device
        )
        classes = list(self.model.classes)
        self.names = cluster_names(self.run, classes) if self.run is not None else classes
        self.colours = run_colours(self.cfg, len(self.names))
        mapping = self.run / MAPPING if self.run is not None else None
        self.mapping = (
            np.asarray(json.loads(mapping.read_text()))
            if head == "cluster" and self.labelled and mapping is not None and mapping.is_file()
            else None
        )

    def __call__(self, image) -> np.ndarray:
        """(H, W) int64 cluster ids (class ids for a labelled run with a Hungarian map) of one image of any size."""
        from hpnb.evaluate import image_labels

        return image_labels(_as_rgb(image), self.cfg, self.model, self.backbone, self.crf, self.head, self.mapping)

    def overlay(self, image, labels: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The photo with its cluster colours blended in (uint8, H x W x 3)."""
        from hpnb.viz import overlay

        image = _as_rgb(image)
        return overlay(image, self(image) if labels is None else labels, self.colours, alpha)


def _labelled(run: Path | None) -> bool:
    """Whether a run folder's checkpoint was trained with labels (the trainer marks unlabelled ones)."""
    from hpnb.runs import BEST, CHECKPOINT

    if run is None:
        return True
    path = run / BEST if (run / BEST).is_file() else run / CHECKPOINT
    meta = json.loads(torch.load(path, map_location="cpu", weights_only=True)["meta"])
    return meta.get("labelled", True)


def predict(image, run_or_checkpoint, crf: bool = True, head: str = "cluster", which: str = "best") -> np.ndarray:
    """Label map (H, W) for one RGB image of any size (uint8 array, PIL image or path) with a run folder (or a
    (cfg, model) pair): cluster ids, or classes for a labelled run with a Hungarian map (module docstring)."""
    return Segmenter(run_or_checkpoint, which=which, crf=crf, head=head)(image)


# ----------------------------------------------------------------------------------------------------------
# A whole folder
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FolderPrediction:
    """What `predict_folder` wrote: how many images, which were skipped and why, the time it took."""

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = f", skipped {len(self.skipped)} unreadable" if self.skipped else ""
        return f"segmented {len(self.written)} images{skipped} -> {self.out}"


def save_labels(labels: np.ndarray, colours: np.ndarray, path: Path) -> None:
    """An 8-bit palette PNG: pixel value = cluster id, shown in the cluster's colour by any image viewer."""
    if labels.max(initial=0) > 255:
        raise HpnbError(f"a palette PNG holds at most 256 clusters, found id {labels.max()}")
    im = Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours[:256]
    im.putpalette(flat.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def predict_folder(
    run,
    source,
    out,
    crf: bool = True,
    head: str = "cluster",
    which: str = "best",
    alpha: float = 0.5,
    progress: bool = True,
    segmenter: Segmenter | None = None,
) -> FolderPrediction:
    """Segment one image file or every image under a folder (nested folders kept) into `out`: <name>.png (palette
    PNG of cluster ids), <name>_overlay.jpg (the photo with the colours blended in), and once legend.png and
    legend.json (id, name, colour). Unreadable files are skipped, counted and named once at the end."""
    from hpnb.data.folder import SHOW, FolderWarning, _files
    from hpnb.viz import legend_figure, overlay

    source, out = Path(source), Path(out)
    if not source.exists():
        raise HpnbError(f"no such image or folder: {source}. Pass an image file or a folder of images.")
    inside_out = lambda f: out.resolve() in f.resolve().parents  # noqa: E731  (earlier outputs under the source)
    files = [source] if source.is_file() else [f for f in _files(source) if not inside_out(f)]
    if not files:
        raise HpnbError(
            f"found no image files under {source} (searched nested folders for .jpg, .jpeg, .png, .bmp, .tif, .webp, "
            ".gif). Pass a folder that holds images."
        )
    seg = segmenter or Segmenter(run, which=which, crf=crf, head=head)
    result = FolderPrediction(out=out)
    start = time.perf_counter()
    for path in progress_bar(iterable=files, desc="predict", unit="img", disable=not progress):
        rel = path.name if source.is_file() else path.relative_to(source).as_posix()
        try:
            image = _as_rgb(path)
        except HpnbError:
            result.skipped.append(rel)
            continue
        labels = seg(image)
        stem = out / Path(rel).with_suffix("")
        save_labels(labels, seg.colours, stem.with_suffix(".png"))
        Image.fromarray(overlay(image, labels, seg.colours, alpha)).save(f"{stem}_overlay.jpg", quality=90)
        result.written.append(rel)
    result.seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    legend = [{"id": k, "name": n, "colour": seg.colours[k].tolist()} for k, n in enumerate(seg.names)]
    (out / "legend.json").write_text(json.dumps(legend, indent=1))
    fig = legend_figure(seg.names, seg.colours)
    fig.savefig(out / "legend.png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    if result.skipped:
        more = f" and {len(result.skipped) - SHOW} more" if len(result.skipped) > SHOW else ""
        warnings.warn(
            f"skipped {len(result.skipped)} of {len(files)} files under {source} that are not readable images: "
            f"{', '.join(result.skipped[:SHOW])}{more}",
            FolderWarning,
            stacklevel=2,
        )
    return result


class _CallableModule(types.ModuleType):
    """`hpnb.predict(image, run)`: the module called as its `predict` function."""

    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


class _FeatureKMeans(torch.nn.Module):
    """k-means centroids on the raw backbone features, shaped like an HPModel for `image_labels`: the heads are the
    identity, so the "codes" are the backbone features themselves."""

    def __init__(self, centroids: torch.Tensor, classes: list[str]):
        super().__init__()
        self.heads = torch.nn.Module()
        self.heads.seg = torch.nn.Identity()
        self.cluster_probe = torch.nn.Module()
        self.cluster_probe.centroids = torch.nn.Parameter(centroids.float(), requires_grad=False)
        self.classes = list(classes)


def raw_kmeans_segmenter(seg: "Segmenter", train_fs, max_points: int = 100_000, seed: int = 0) -> "Segmenter":
    """What training changed, made visible: a Segmenter that clusters the *raw* backbone features with k-means
    (k = the run's clusters, fitted on the training patches, protocol ii's baseline) and segments photos exactly as
    `seg` does (same resizing, no CRF). Its cluster ids are matched one-to-one to the run's clusters by the
    Hungarian method on the training patches, so one colour means the run's cluster it overlaps most."""
    import torch.nn.functional as F

    from hpnb.baseline import kmeans, sample_patches
    from hpnb.metrics import hungarian_match

    k = len(seg.names)
    x = sample_patches(train_fs, max_points, seed)
    centroids = kmeans(x, k, seed=seed)
    with torch.no_grad():
        device = next(seg.model.parameters()).device
        codes = seg.model.heads.seg(x[:, :, None, None].to(device))[:, :, 0, 0].cpu().float()
        hp = (
            F.normalize(codes, dim=1) @ F.normalize(seg.model.cluster_probe.centroids.detach().cpu(), dim=1).T
        ).argmax(1)
    raw = (x @ centroids.T).argmax(1)
    overlap = torch.zeros(k, k, dtype=torch.long).index_put_((raw, hp), torch.ones_like(raw), accumulate=True)
    order = np.asarray(hungarian_match(overlap.numpy()))  # raw cluster -> run cluster
    matched = torch.empty_like(centroids)
    matched[torch.as_tensor(order)] = centroids  # row j: the raw centroid matched to the run's cluster j
    return Segmenter((seg.cfg, _FeatureKMeans(matched, seg.names)), crf=False, backbone=seg.backbone, device=device)
