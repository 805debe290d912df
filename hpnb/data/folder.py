"""Your own images: a plain folder of photos (any sizes, jpg/png/..., nested folders) as a registered dataset.

    hpnb.data.get_dataset("folder", "train", root="my_photos", n_clusters=8)
    python -m hpnb train --preset folder data_root=my_photos n_clusters=8

Labels are optional. Without them every pixel is "ignore" (-1) and the run learns `n_clusters` clusters; with them
(`labels/` beside `images/` plus a `classes.txt`) the folder is scored like any built-in dataset:

    ROOT/                         ROOT/
      *.jpg, sub/*.png, ...   or    images/**/*.jpg       the same tree as labels/**/*.png (class index per pixel,
                                    labels/**/*.png       255 or any value >= the number of classes = ignore)
                                    classes.txt           one class name per line

The split is fixed by each file's name alone (`held_out`): `val` (= `test`) holds the images whose SHA-1 of the
relative path falls under a fixed threshold (a tenth of the hash range), `train` the rest, `all` everything, so adding
or removing images never moves another one between splits (a folder too small for any name to fall under the
threshold holds out its one smallest hash until one does). Photos are read as a viewer shows them
(`hpnb.data.base.read_photo`: EXIF orientation, 16-bit scaled to 8 bits, over `MAX_PIXELS` read at a reduced size) and
resized with the folder's resampling (`hpnb.data.transforms.RESAMPLING`, also used by `hpnb.predict`). Unreadable files
(broken, dangling links, over PIL's pixel limit) are skipped (counted, the first few named, once); images whose shorter
side is under one crop are upscaled (and said so); images under `MIN_SIDE` pixels are skipped, in training as in
prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import hpnb.data.base as base
from hpnb.data.base import (
    DatasetError,
    SegDataset,
    TransformArg,
    default_root,
    make_transform,
    photo_pixels,
    read_index_png,
    reduction,
)
from hpnb.data.transforms import SegTransform, resampling
from hpnb.utils import HpnbError, cache_dir

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VAL_SHARE = 0.1  # the held-out tenth (at least one image)
HASH_BITS = 64  # the first 64 bits of a name's SHA-1, compared with VAL_SHARE * 2**64 (`held_out`)
MIN_SIDE = 16  # pixels: anything smaller is skipped (nothing to see at one patch), in training and prediction
MAX_CLUSTERS = 255  # a label PNG holds one byte a pixel, and 255 means "ignore" in label files
SHOW = 5  # names quoted in a warning


class FolderWarning(UserWarning):
    """Something in a folder of images was skipped or changed (unreadable, too small, upscaled)."""


def _files(images: Path, exclude: Path | None = None) -> list[Path]:
    """Image files (by extension) under `images`, nested folders included, hidden ones and `exclude` left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(images):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d != exclude)
        out += [here / f for f in sorted(filenames) if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return out


def _probe(path: Path) -> list[int] | str | None:
    """[width, height] of an image file that decodes completely (at reduced scale, fast), else why not: a short
    reason where it helps (a dangling link, over PIL's pixel limit), None for any other unreadable file."""
    if path.is_symlink() and not path.exists():
        return "a link to a missing file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # read at a reduced size (MAX_PIXELS)
            with Image.open(path) as im:
                size = list(im.size)
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: decode at 1/8 scale
                im.load()
        return size
    except Image.DecompressionBombError:
        return f"over PIL's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels"
    except Exception:  # noqa: BLE001  (PIL raises many types for broken files: each one means "skip it")
        return None


def readable(size) -> bool:
    """Whether a `scan` entry is an image's [width, height] (else it is unreadable, with or without a reason)."""
    return isinstance(size, list)


def scan(images: Path, exclude: Path | None = None) -> dict[str, list[int] | str | None]:
    """{relative path: [width, height], or why it is unreadable (a reason or None)} of every image file; remembered
    in the cache by path, size and modification time, so a second scan of a large folder opens nothing."""
    index_file = cache_dir("folders") / f"{hashlib.sha1(str(images.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        known = json.loads(index_file.read_text()) if index_file.is_file() else {}
    except ValueError:
        known = {}
    found, changed = {}, False
    for path in _files(images, exclude):
        rel = path.relative_to(images).as_posix()
        try:
            stat = path.stat()
        except OSError as err:  # a dangling link, a file removed while scanning
            found[rel] = _probe(path) if path.is_symlink() else err.strerror
            continue
        stamp = [stat.st_size, stat.st_mtime_ns]
        if rel in known and known[rel][0] == stamp:
            found[rel] = known[rel][1]
        else:
            found[rel], changed = _probe(path), True
        if not isinstance(found[rel], str):  # a reason (over PIL's limit, ...) may change without the file: ask again
            known[rel] = [stamp, found[rel]]
    if changed:
        tmp = index_file.with_name(f"{index_file.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(known))
        tmp.replace(index_file)
    return found


def name_hash(name: str) -> int:
    """The first `HASH_BITS` bits of the SHA-1 of a relative path, as a number."""
    return int(hashlib.sha1(name.encode()).hexdigest()[: HASH_BITS // 4], 16)


def held_out(names: list[str], share: float = VAL_SHARE) -> set[str]:
    """The validation part: a name is held out iff its hash (`name_hash`) is below share · 2^HASH_BITS, a threshold
    that depends on nothing else, so adding or removing other images never moves a name between the parts.

    Both parts must hold an image (at least 2 names). When no name is under the threshold (about 0.9^n of folders of
    n images: a third at 10, 4 % at 30) the one smallest hash is held out instead, and when every name is under it the
    largest goes to training; these two fallbacks depend on the other names, so in a folder that small an added image
    can still swap the held-out one. Once some name is under the threshold the fallback is off and stays off while
    images are added."""
    threshold = share * 2**HASH_BITS
    hashes = {n: name_hash(n) for n in names}
    below = {n for n, h in hashes.items() if h < threshold}
    if len(names) < 2:
        return below
    if not below:
        return {min(names, key=hashes.get)}
    if len(below) == len(names):
        return below - {max(names, key=hashes.get)}
    return below


def _listing(names: list[str], reasons: dict[str, str] | None = None) -> str:
    """The first `SHOW` names (with their reason, where there is one) and how many more."""
    reasons = reasons or {}
    shown = [f"{n} ({reasons[n]})" if reasons.get(n) else n for n in names[:SHOW]]
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return ", ".join(shown) + more


def warn_unreadable(names: list[str], total: int, where: Path, reasons: dict[str, str] | None = None) -> None:
    """The one warning about files that are not readable images (training and prediction say the same)."""
    warnings.warn(
        f"skipped {len(names)} of {total} files under {where} that are not readable images: {_listing(names, reasons)}",
        FolderWarning,
        stacklevel=3,
    )


def warn_tiny(names: list[str]) -> None:
    """The one warning about images under `MIN_SIDE` pixels on a side (training and prediction skip them)."""
    warnings.warn(
        f"skipped {len(names)} image{'s' * (len(names) != 1)} smaller than {MIN_SIDE} px on a side: {_listing(names)}",
        FolderWarning,
        stacklevel=3,
    )


def warn_reduced(sizes: dict[str, list[int]]) -> None:
    """The one warning about photos over `MAX_PIXELS`, read at 1/f of their width and height."""
    listed = {n: f"{w}x{h}, read at 1/{reduction(w, h)}" for n, (w, h) in sizes.items()}
    warnings.warn(
        f"{len(sizes)} images are over {base.MAX_PIXELS / 1e6:g} megapixels and are read at a reduced size (their label "
        f"maps too): {_listing(sorted(sizes), listed)}",
        FolderWarning,
        stacklevel=3,
    )


def too_small(size: list[int]) -> bool:
    """Whether an image of [width, height] is skipped: under `MIN_SIDE` pixels on a side as it is read."""
    return min(size) // reduction(*size) < MIN_SIDE


def check_n_clusters(n_clusters) -> None:
    """2 <= n_clusters <= `MAX_CLUSTERS` (None: not given, checked by the trainer); HpnbError for each other case."""
    if n_clusters is None:
        return
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int):
        raise HpnbError(
            f"n_clusters must be a whole number from 2 to {MAX_CLUSTERS}, found {n_clusters!r}. Pass e.g. n_clusters=8 "
            "(python -m hpnb train --preset folder data_root=PATH n_clusters=8)."
        )
    if n_clusters < 2:
        raise HpnbError(
            f"n_clusters={n_clusters}: HP needs at least 2 clusters (one cluster paints every pixel the same), "
            f"expected 2 to {MAX_CLUSTERS}. Pass e.g. n_clusters=8 (python -m hpnb train --preset folder "
            "data_root=PATH n_clusters=8)."
        )
    if n_clusters > MAX_CLUSTERS:
        raise HpnbError(
            f"n_clusters={n_clusters} is more than {MAX_CLUSTERS}: a label PNG holds one byte a pixel (255 = ignore), "
            "and the evaluation's time and figures grow with the number of clusters (1000 took minutes and a 46 MB "
            f"image). Expected 2 to {MAX_CLUSTERS}; a few to a few dozen is usual. Pass e.g. n_clusters=8."
        )


class ImageFolder(SegDataset):
    """A folder of images, labels optional (module docstring): items as every dataset's, label -1 when unlabelled."""

    name = "folder"
    splits = ("train", "val", "test", "all")
    layout = """  ROOT/**/*.jpg|*.png|...                  (unlabelled: any tree of images)
  or ROOT/images/**/*   ROOT/labels/**/*.png (same tree, class index, 255 = ignore)   ROOT/classes.txt"""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        res: int | None = None,
        transform: TransformArg = None,
        n_clusters: int | None = None,
    ):
        check_n_clusters(n_clusters)  # before any scan
        root = Path(root) if root is not None else default_root(self.name, type(self).has_layout)
        self.classes = self.read_classes(root)
        self.n_clusters = n_clusters
        if not callable(transform):  # the "train"/"val" views, with the folder's resampling (also prediction's)
            built, res = make_transform(transform, split, res)
            transform = SegTransform(built.res, resampling(self.name))
        super().__init__(root, split, res, transform)

    # -- layout -------------------------------------------------------------------------------------------
    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return root.is_dir() and any(True for _ in _files(root))

    @staticmethod
    def read_classes(root: Path) -> list[str]:
        """Class names of a labelled folder (classes.txt, one per line), [] without labels."""
        listing = Path(root) / "classes.txt"
        if not (Path(root) / "labels").is_dir() or not listing.is_file():
            return []
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    @property
    def images_dir(self) -> Path:
        return self.root / "images" if (self.root / "images").is_dir() else self.root

    @property
    def cache_extra(self) -> str:
        """The files and their sizes: adding, removing or editing an image gives new cached features."""
        listing = json.dumps([(n, p.stat().st_size, p.stat().st_mtime_ns) for n, p, _ in self.samples])
        return f"folder {hashlib.sha1(listing.encode()).hexdigest()[:12]} classes={self.classes}"

    def prepare_command(self) -> str:
        return "put images (jpg/png, any size, nested folders allowed) under the folder, then pass data_root=FOLDER"

    # -- samples ------------------------------------------------------------------------------------------
    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(
                f"data_root {self.root} is a file; expected a folder of images ({', '.join(EXTENSIONS)}; nested "
                f"folders are fine).\nNext: pass the folder that holds it: data_root={self.root.parent}"
            )
        if not self.root.is_dir():
            raise DatasetError(
                f"image folder {self.root} does not exist.\n"
                f"Expected a folder of images ({', '.join(EXTENSIONS)}; nested folders are fine).\n"
                "Next: python -m hpnb train --preset folder data_root=/path/to/photos n_clusters=8"
            )
        labels = self.root / "labels" if self.labelled else None
        found = scan(self.images_dir, exclude=labels)
        if not found:
            raise DatasetError(
                f"found no image files under {self.images_dir} (searched nested folders for "
                f"{', '.join(EXTENSIONS)}).\nPut your photos there, or point data_root= at the folder that holds them."
            )
        unreadable = sorted(n for n, size in found.items() if not readable(size))
        tiny = sorted(n for n, size in found.items() if readable(size) and too_small(size))
        good = sorted(n for n in found if n not in unreadable and n not in tiny)
        if unreadable:
            warn_unreadable(unreadable, len(found), self.images_dir, {n: found[n] for n in unreadable})
        if tiny:
            warn_tiny(tiny)
        large = {n: found[n] for n in good if reduction(*found[n]) > 1}
        if large:
            warn_reduced(large)
        if len(good) < 2:
            raise DatasetError(
                f"{self.images_dir} holds {len(good)} usable image(s); expected at least 2 (one is held out to select "
                "the checkpoint), and a few dozen to learn clusters. Add images to the folder."
            )
        res = self.res or 0
        small = sorted(n for n in good if min(found[n]) < res)
        if small and self.split in ("train", "all"):
            warnings.warn(
                f"{len(small)} of {len(good)} images are smaller than one crop ({res} px on the shorter side) and are "
                f"upscaled, which blurs them: {_listing(small)}",
                FolderWarning,
                stacklevel=3,
            )
        val = held_out(good)
        keep = {"train": [n for n in good if n not in val], "all": good}.get(self.split, [n for n in good if n in val])
        return [(n, self.images_dir / n, labels / Path(n).with_suffix(".png") if labels else None) for n in keep]

    def load_image(self, i: int) -> np.ndarray:
        """The photo as a viewer shows it (`read_photo`, as `hpnb.predict` reads it)."""
        return photo_pixels(self.samples[i][1])[0]

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i before transforms; an image without a label file gets an all-ignore (-1) label of its size, and
        the label of a photo read at a reduced size (over `MAX_PIXELS`) is reduced with it (nearest)."""
        image, f = photo_pixels(self.samples[i][1])
        path = self.samples[i][2]
        if path is None or not path.is_file():
            return image, np.full(image.shape[:2], -1, dtype=np.int64)
        label = self.load_label(i)
        if f > 1 and label.shape != image.shape[:2]:
            label = np.asarray(Image.fromarray(label.astype(np.int32)).resize(image.shape[1::-1], Image.NEAREST))
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.samples[i][1]}: image is {image.shape[0]}x{image.shape[1]} (as a viewer shows it, EXIF "
                f"orientation applied) but its label {path} is {label.shape[0]}x{label.shape[1]} (H x W). Draw labels "
                "on the image as it is shown, or save the photo without an EXIF rotation."
            )
        return image, label.astype(np.int64)

    def load_label(self, i: int) -> np.ndarray:
        """Class index per pixel; -1 where unlabelled, where the label file is missing or the value is no class."""
        path = self.samples[i][2]
        if path is None or not path.is_file():
            return np.full(self.load_image(i).shape[:2], -1, dtype=np.int64)
        label = read_index_png(path).astype(np.int64)
        label[label >= len(self.classes)] = -1
        return label


# ----------------------------------------------------------------------------------------------------------
# The notebook's default folder: scikit-image's bundled photos and a few toy-world scenes (offline)
# ----------------------------------------------------------------------------------------------------------

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "clock",
    "grass",
    "brick",
    "gravel",
)


def example_folder(path: str | Path, n_toy: int = 24, seed: int = 0) -> Path:
    """Write the default folder (idempotent): scikit-image's bundled photos as photos/<name>.jpg at their own sizes,
    the left motorcycle view as photos/street/motorcycle.png (nested), and `n_toy` toy-world scenes at 224 or 280 px
    as toy/scene_<k>.png. Nothing is downloaded. Returns the folder."""
    import skimage.data

    from hpnb.data.toyworld import make_scene

    path = Path(path)
    (path / "photos" / "street").mkdir(parents=True, exist_ok=True)
    (path / "toy").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        target = path / "photos" / f"{name}.jpg"
        if not target.is_file():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(target, quality=90)
    target = path / "photos" / "street" / "motorcycle.png"
    if not target.is_file():
        Image.fromarray(skimage.data.stereo_motorcycle()[0]).save(target)
    for k in range(n_toy):
        target = path / "toy" / f"scene_{k:02d}.png"
        if not target.is_file():
            Image.fromarray(make_scene(300_000 + k, 224 if k % 2 else 280, seed)[0]).save(target)
    return path
