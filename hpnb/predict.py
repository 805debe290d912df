"""Segment any photo with a trained run: one image of any size, or a whole folder (label PNGs, overlays, a legend).

    labels = hpnb.predict(image, "runs/mine")                     # (H, W) cluster (or class) ids of one image
    seg = hpnb.predict.Segmenter("runs/mine")                     # backbone and run loaded once, for many images
    hpnb.predict.predict_folder("runs/mine", "photos/", "out/")   # PNGs with a palette, overlays, legend.png
    python -m hpnb predict runs/mine photos/ --out out/

A photo is read as the folder dataset reads it (`hpnb.data.base.read_photo`: EXIF orientation, 16-bit and float
pixels scaled to 8 bits, over `MAX_PIXELS` at a reduced size; under `MIN_SIDE` px skipped). The whole image is resized
(not cropped) so that its shorter side is the run's `val_res` and both sides are multiples of the patch size; the
cluster scores are upsampled back to the size read, and the dense CRF (when pydensecrf is installed) refines them on
the image. Cluster names come from `names.json` in the run folder (`name_clusters`), else "cluster k"; a labelled run
maps clusters to classes with the evaluation's Hungarian map.

Your files are never written to: the output folder may not be the input folder, an output never replaces a file
that `predict_folder` did not write itself (those are listed in the folder's predictions.json), and two inputs never
share an output name (`plan_outputs`).

The module is callable: `hpnb.predict(image, run)` is `hpnb.predict.predict(image, run)`.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpnb.utils import HpnbError, atomic_write, atomic_write_json, progress_bar

NAMES = "names.json"  # {"0": "sky", "3": "person", ...} in a run folder: what a person called the clusters
MAPPING = "cluster_mapping.json"  # cluster -> class, written by the evaluation of a labelled run
MANIFEST = "predictions.json"  # in an output folder: each input's output files (only those are ever replaced)
NAMES_FORMAT = '{"0": "sky", "3": "road"} (cluster id: name) or a list of names ["sky", null, "road"]'


def read_names(path: Path) -> dict[int, str]:
    """{cluster id: name} of a names.json; HpnbError naming the file, what it should hold and the fix otherwise."""
    fix = (
        f"Fix or delete {path}, or write it again with hpnb.predict.name_clusters(run, {{0: 'sky', 3: 'road'}}) "
        "(it merges with the names already there)."
    )
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise HpnbError(f"{path} is not valid JSON ({err}); expected {NAMES_FORMAT}. {fix}") from err
    if isinstance(given, list):
        items = [(k, v) for k, v in enumerate(given) if v is not None]
    elif isinstance(given, dict):
        items = list(given.items())
    else:
        raise HpnbError(f"{path} holds a JSON {type(given).__name__}; expected {NAMES_FORMAT}. {fix}")
    names = {}
    for key, name in items:
        try:
            k = int(str(key).replace("cluster", "").strip())
        except ValueError:
            raise HpnbError(f"{path}: {key!r} is not a cluster id; expected {NAMES_FORMAT}. {fix}") from None
        if not isinstance(name, str):
            raise HpnbError(
                f"{path}: the name of cluster {k} is {name!r}; expected {NAMES_FORMAT}, names as strings. {fix}"
            )
        names[k] = name
    return names


def cluster_names(run, classes: list[str] | None = None) -> list[str]:
    """The names of a run's clusters: `names.json` where a person named them, else the run's class names (a
    labelled run) or "cluster k"."""
    from hpnb.runs import load_run

    if classes is None:
        classes = list(load_run(run)[1].classes)
    names = list(classes)
    path = Path(run) / NAMES
    if path.is_file():
        for k, name in read_names(path).items():
            if not 0 <= k < len(names):
                raise HpnbError(
                    f"{path}: cluster {k} does not exist (the run has clusters 0..{len(names) - 1}). Remove it from "
                    "the file."
                )
            names[k] = name
    return names


def name_clusters(run, names: dict[int, str]) -> Path:
    """Save names for some clusters ({cluster id: name}) in the run's names.json (merged with earlier names)."""
    path = Path(run) / NAMES
    saved = {str(k): v for k, v in read_names(path).items()} if path.is_file() else {}
    saved.update({str(int(k)): str(v) for k, v in names.items()})
    return atomic_write_json(path, dict(sorted(saved.items(), key=lambda kv: int(kv[0]))))


def run_colours(cfg, n: int) -> np.ndarray:
    """(n, 3) uint8 colours of a run's clusters or classes: the toy world's palette, else hpnb's fixed one."""
    from hpnb.viz import palette

    if cfg.dataset == "toy":
        from hpnb.data.toyworld import PALETTE

        return np.asarray(PALETTE, dtype=np.uint8)
    return palette(n)


def _as_rgb(image) -> np.ndarray:
    """uint8 (H, W, 3) of a file path, a PIL image or an array, read as the folder dataset reads its photos
    (`hpnb.data.base.read_photo`); HpnbError for an image under `MIN_SIDE` pixels on a side, which training skips."""
    from hpnb.data.base import MAX_PIXELS, photo_pixels
    from hpnb.data.folder import MIN_SIDE, FolderWarning

    pixels, f = photo_pixels(image)
    what = str(image) if isinstance(image, (str, Path)) else "the image"
    if f > 1:
        warnings.warn(
            f"{what} is over {MAX_PIXELS / 1e6:g} megapixels: read and segmented at 1/{f} of its width and height "
            f"({pixels.shape[1]}x{pixels.shape[0]})",
            FolderWarning,
            stacklevel=3,
        )
    if min(pixels.shape[:2]) < MIN_SIDE:
        raise HpnbError(
            f"{what} is {pixels.shape[0]}x{pixels.shape[1]} pixels (H x W), smaller than {MIN_SIDE} px on a side: "
            "too small to segment (training skips such images too). Pass a larger image."
        )
    return pixels


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
    """Whether a run folder's checkpoint was trained with labels (`hpnb.runs.labelled`); a loaded pair: True."""
    from hpnb.runs import labelled

    return True if run is None else labelled(run)


def predict(image, run_or_checkpoint, crf: bool = True, head: str = "cluster", which: str = "best") -> np.ndarray:
    """Label map (H, W) for one RGB image of any size (uint8 array, PIL image or path) with a run folder (or a
    (cfg, model) pair): cluster ids, or classes for a labelled run with a Hungarian map (module docstring)."""
    return Segmenter(run_or_checkpoint, which=which, crf=crf, head=head)(image)


# ----------------------------------------------------------------------------------------------------------
# A whole folder
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FolderPrediction:
    """What `predict_folder` wrote: each input's outputs, which inputs were skipped and why, the time it took."""

    out: Path
    written: list[str] = field(default_factory=list)  # inputs segmented (relative paths)
    skipped: list[str] = field(default_factory=list)  # inputs that are not readable images
    too_small: list[str] = field(default_factory=list)  # inputs under MIN_SIDE px on a side
    outputs: dict[str, list[str]] = field(default_factory=dict)  # input -> [label PNG, overlay JPEG] under out
    legend: Path | None = None
    manifest: Path | None = None  # predictions.json: each input's outputs
    seconds: float = 0.0

    def __str__(self) -> str:
        skipped = f", skipped {len(self.skipped)} unreadable" if self.skipped else ""
        small = f", skipped {len(self.too_small)} too small" if self.too_small else ""
        return f"segmented {len(self.written)} images{skipped}{small} -> {self.out}"


def save_labels(labels: np.ndarray, colours: np.ndarray, path: Path) -> None:
    """An 8-bit palette PNG: pixel value = cluster id, shown in the cluster's colour by any image viewer."""
    if labels.max(initial=0) > 255:
        raise HpnbError(f"a palette PNG holds at most 256 clusters, found id {labels.max()}")
    im = Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(colours)] = colours[:256]
    im.putpalette(flat.ravel().tolist())
    _save_image(im, path, "PNG")


def _save_image(im: Image.Image, path: Path, fmt: str, **options) -> None:
    """PIL save through a .part file and a rename (`hpnb.utils.atomic_write_text`'s way): never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: im.save(tmp, format=fmt, **options))


def _owned(out: Path) -> set[str]:
    """The files an earlier `predict_folder` wrote into `out` (its predictions.json lists them): only these may be
    replaced. A predictions.json that is not hpnb's counts as a file of yours."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        owned = {MANIFEST, *manifest["legend"]}
        for files in manifest["images"].values():
            owned.update(files)
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in owned if isinstance(name, str)}


def plan_outputs(inputs: list[str], out: Path) -> tuple[dict[str, list[str]], list[str], str]:
    """({input: [label PNG, overlay JPEG]}, [legend PNG, legend JSON], manifest) names under `out`, every one unique.

    An input keeps its relative path with .png / _overlay.jpg; inputs that share a folder and a stem (street.tif,
    street.webp) keep their suffix (street_tif.png, street_webp.png). A name already taken in `out` by a file that
    `predict_folder` did not write (`_owned`), or by another output, gets -1, -2, ... (street-1.png)."""
    owned = _owned(out)
    taken: set[str] = set()  # case-folded: Photo.png and photo.png are one file on macOS and Windows

    def claim(base: str, endings: tuple[str, ...]) -> list[str]:
        for k in itertools.count():
            names = [f"{base if k == 0 else f'{base}-{k}'}{e}" for e in endings]
            if all(n.casefold() not in taken and (n in owned or not os.path.lexists(out / n)) for n in names):
                taken.update(n.casefold() for n in names)
                return names
        raise AssertionError  # unreachable: itertools.count() is endless

    legend = claim("legend", (".png", ".json"))
    manifest = claim("predictions", (".json",))[0]
    stems: dict[tuple[str, str], int] = {}
    for rel in inputs:
        key = (Path(rel).parent.as_posix(), Path(rel).stem.casefold())
        stems[key] = stems.get(key, 0) + 1
    plan = {}
    for rel in inputs:
        path = Path(rel)
        shared = stems[(path.parent.as_posix(), path.stem.casefold())] > 1
        base = (path.parent / (f"{path.stem}_{path.suffix.lstrip('.')}" if shared else path.stem)).as_posix()
        plan[rel] = claim(base, (".png", "_overlay.jpg"))
    return plan, legend, manifest


def _check_out(source: Path, out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is the input folder (or the folder of the input image), that is a file, or
    where an output would land on an input; before anything is loaded or written."""
    folder = source.resolve() if source.is_dir() else source.resolve().parent
    elsewhere = folder.parent / f"{folder.name}_predictions"
    if out.resolve() == folder:
        what = "the input folder" if source.is_dir() else f"the folder of the input image {source.name}"
        raise HpnbError(
            f"--out {out} is {what}: predictions never go among the photos they come from (an output could replace "
            f"a photo). Expected a folder of their own; pass e.g. --out {elsewhere}"
        )
    if out.exists() and not out.is_dir():
        raise HpnbError(f"--out {out} is a file; expected a folder (created when missing). Pass e.g. --out {elsewhere}")
    desired = {
        (out / name).resolve(): rel
        for rel in inputs
        for name in (Path(rel).with_suffix(".png"), f"{Path(rel).with_suffix('')}_overlay.jpg")
    }
    for path in inputs.values():
        if path.resolve() in desired:
            raise HpnbError(
                f"--out {out} would put the labels of {desired[path.resolve()]} on the input file {path}. Expected a "
                f"folder that holds none of the inputs; pass e.g. --out {elsewhere}"
            )


def _writable(out: Path) -> bool:
    """Create `out` when missing and check a file can be written there (True: it was created here)."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hpnb-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise HpnbError(
            f"cannot write to the output folder {out} ({err.strerror or err}); expected a folder you can write to. "
            "Nothing was loaded or written: pass another folder with --out DIR."
        ) from err
    return created


def _usable(source: Path, out: Path) -> tuple[Path, dict[str, list[int] | str | None]]:
    """(root, {input relative to root: [width, height] or why it is unreadable}) of an image file or of every image
    file under a folder (`hpnb.data.folder.scan`), the output folder's own subtree left out."""
    from hpnb.data.folder import _probe, scan

    if source.is_file():
        return source.parent, {source.name: _probe(source)}
    inside = out.resolve().is_relative_to(source.resolve())
    found = scan(source, exclude=source / out.resolve().relative_to(source.resolve()) if inside else None)
    return source, {rel: v for rel, v in found.items() if not (source / rel).resolve().is_relative_to(out.resolve())}


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
    """Segment one image file or every image under a folder (nested folders kept) into the folder `out`:
    <name>.png (palette PNG of cluster ids), <name>_overlay.jpg (the photo with the colours blended in), once
    legend.png and legend.json (id, name, colour), and predictions.json (each input's outputs).

    Your files are never written to: `out` may not be the input folder or the input image's folder (HpnbError before
    the model loads), an output never replaces a file an earlier call did not write (it gets a unique name,
    `plan_outputs`), and inputs that share a stem get outputs of their own. Files that are not readable images and
    images under `MIN_SIDE` px are skipped, as training skips them (one warning each); when nothing can be segmented
    this is an HpnbError, and a folder that cannot be written is one before the model loads."""
    from hpnb.data.base import photo_pixels, reduction
    from hpnb.data.folder import MIN_SIDE, readable, too_small, warn_reduced, warn_tiny, warn_unreadable
    from hpnb.viz import legend_figure, overlay

    source, out = Path(source), Path(out)
    if not source.exists():
        raise HpnbError(f"no such image or folder: {source}. Pass an image file or a folder of images.")
    _check_out(source, out, {})
    root, found = _usable(source, out)
    if not found:
        raise HpnbError(
            f"found no image files under {source} (searched nested folders for .jpg, .jpeg, .png, .bmp, .tif, .webp, "
            ".gif). Pass a folder that holds images."
        )
    reasons = {rel: size for rel, size in found.items() if not readable(size)}
    result = FolderPrediction(out=out, skipped=sorted(reasons))
    result.too_small = sorted(rel for rel, size in found.items() if readable(size) and too_small(size))
    usable = [rel for rel in found if rel not in reasons and rel not in result.too_small]

    def nothing() -> HpnbError:
        listed = [f"{len(reasons)} not readable as images ({', '.join(_shown(reasons))})"] if reasons else []
        if result.too_small:
            listed.append(f"{len(result.too_small)} under {MIN_SIDE} px on a side ({', '.join(result.too_small[:5])})")
        return HpnbError(
            f"nothing to segment: of the {len(found)} image files under {source}, {'; '.join(listed)}. Nothing was "
            f"written to {out}. Pass readable images of at least {MIN_SIDE} px on a side."
        )

    if not usable:
        raise nothing()
    _check_out(source, out, {rel: root / rel for rel in found})
    plan, legend_names, manifest = plan_outputs(usable, out)
    created = _writable(out)
    seg = segmenter or Segmenter(run, which=which, crf=crf, head=head)
    large = {rel: found[rel] for rel in usable if reduction(*found[rel]) > 1}
    start = time.perf_counter()
    for rel in progress_bar(iterable=usable, desc="predict", unit="img", disable=not progress):
        try:
            image, _ = photo_pixels(root / rel)
        except HpnbError as err:  # read after the scan: a mode it cannot convert, a file changed meanwhile
            reasons[rel] = _reason(err, root / rel)
            result.skipped.append(rel)
            continue
        labels = seg(image)
        labels_name, overlay_name = plan[rel]
        save_labels(labels, seg.colours, out / labels_name)
        _save_image(Image.fromarray(overlay(image, labels, seg.colours, alpha)), out / overlay_name, "JPEG", quality=90)
        result.written.append(rel)
        result.outputs[rel] = [labels_name, overlay_name]
    result.seconds = time.perf_counter() - start
    result.skipped.sort()
    if result.skipped:
        warn_unreadable(result.skipped, len(found), source, reasons)
    if result.too_small:
        warn_tiny(result.too_small)
    if large:
        warn_reduced(large)
    if not result.written:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise nothing()
    legend = [{"id": k, "name": n, "colour": seg.colours[k].tolist()} for k, n in enumerate(seg.names)]
    atomic_write_json(out / legend_names[1], legend, indent=1)
    fig = legend_figure(seg.names, seg.colours)
    atomic_write(out / legend_names[0], lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    import matplotlib.pyplot as plt

    plt.close(fig)
    result.legend, result.manifest = out / legend_names[0], out / manifest
    earlier = json.loads((out / manifest).read_text())["images"] if MANIFEST in _owned(out) else {}
    atomic_write_json(
        out / manifest,
        {
            "hpnb": "predict_folder",
            "source": str(source),
            "run": str(seg.run) if seg.run is not None else None,
            "legend": legend_names,
            "images": {**earlier, **result.outputs},
        },
        indent=1,
    )
    return result


def _reason(err: HpnbError, path: Path) -> str | None:
    """Why a file the scan found readable could not be read after all, in a few words (None: not an image)."""
    text = str(err).removeprefix(str(path)).lstrip(": ").removeprefix("is ").split(". ")[0]
    return None if text.startswith("not a readable image") else text


def _shown(reasons: dict[str, str | None]) -> list[str]:
    """The first few unreadable names, each with its reason where there is one."""
    names = sorted(reasons)
    return [f"{n} ({reasons[n]})" if reasons[n] else n for n in names[:5]] + (
        [f"{len(names) - 5} more"] if len(names) > 5 else []
    )


def predict_file(run, image, out, crf: bool = True, head: str = "cluster", which: str = "best") -> np.ndarray:
    """Segment one image into a NumPy file `out` (.npy, the (H, W) label map). An existing `out` is never replaced,
    and an unreadable image or an unwritable place fail before the model loads."""
    image, out = Path(image), Path(out)
    if os.path.lexists(out):
        raise HpnbError(f"{out} exists; hpnb never replaces a file. Pass a new file name, or delete it first.")
    pixels = _as_rgb(image)
    _writable(out.parent)
    labels = Segmenter(run, which=which, crf=crf, head=head)(pixels)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, labels)

    atomic_write(out, write)
    return labels


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
