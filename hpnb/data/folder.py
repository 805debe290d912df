"""Your own images: a plain folder of photos (any sizes, jpg/png/..., nested folders) as a registered dataset.

    hpnb.data.get_dataset("folder", "train", root="my_photos", n_clusters=8)
    python -m hpnb train --preset folder data_root=my_photos n_clusters=8

Labels are optional. Without them every pixel is "ignore" (-1) and the run learns `n_clusters` clusters; with them
(`labels/` beside `images/` plus a `classes.txt`) the folder is scored like any built-in dataset:

    ROOT/                         ROOT/
      *.jpg, sub/*.png, ...   or    images/**/*.jpg       the same tree as labels/**/*.png (class index per pixel,
                                    labels/**/*.png       255 or any value >= the number of classes = ignore)
                                    classes.txt           one class name per line

The split is fixed by the file names: `val` (= `test`) is the tenth of the images, at least one, whose SHA-1 of the
relative path is smallest; `train` is the rest, `all` everything. Adding images never moves an old one between splits
unless it falls into the held-out share. Unreadable files are skipped (counted, the first few named, once); images
whose shorter side is under one crop are upscaled (and said so); images under `MIN_SIDE` pixels are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from hpnb.data.base import DatasetError, SegDataset, TransformArg, default_root, read_index_png, read_rgb
from hpnb.utils import cache_dir

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VAL_SHARE = 0.1  # the held-out tenth (at least one image)
MIN_SIDE = 16  # pixels: anything smaller is skipped (nothing to see at one patch)
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


def _probe(path: Path) -> list[int] | None:
    """[width, height] of an image file that decodes completely (at reduced scale, fast), else None."""
    try:
        with Image.open(path) as im:
            size = list(im.size)
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG: decode at 1/8 scale
            im.load()
        return size
    except Exception:  # noqa: BLE001  (PIL raises many types for broken files: each one means "skip it")
        return None


def scan(images: Path, exclude: Path | None = None) -> dict[str, list[int] | None]:
    """{relative path: [width, height] or None (unreadable)} of every image file; remembered in the cache by path,
    size and modification time, so a second scan of a large folder opens nothing."""
    index_file = cache_dir("folders") / f"{hashlib.sha1(str(images.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        known = json.loads(index_file.read_text()) if index_file.is_file() else {}
    except ValueError:
        known = {}
    found, changed = {}, False
    for path in _files(images, exclude):
        rel = path.relative_to(images).as_posix()
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if rel in known and known[rel][0] == stamp:
            found[rel] = known[rel][1]
        else:
            found[rel], changed = _probe(path), True
        known[rel] = [stamp, found[rel]]
    if changed:
        tmp = index_file.with_name(f"{index_file.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(known))
        tmp.replace(index_file)
    return found


def held_out(names: list[str], share: float = VAL_SHARE) -> set[str]:
    """The validation part: the `share` of names (at least one, never all) with the smallest SHA-1."""
    k = min(max(1, round(share * len(names))), len(names) - 1)
    ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    return set(ranked[:k])


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


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
        root = Path(root) if root is not None else default_root(self.name, type(self).has_layout)
        self.classes = self.read_classes(root)
        self.n_clusters = n_clusters
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
        unreadable = sorted(n for n, size in found.items() if size is None)
        tiny = sorted(n for n, size in found.items() if size is not None and min(size) < MIN_SIDE)
        good = sorted(n for n in found if n not in unreadable and n not in tiny)
        if unreadable:
            warnings.warn(
                f"skipped {len(unreadable)} of {len(found)} files under {self.images_dir} that are not readable "
                f"images: {_listing(unreadable)}",
                FolderWarning,
                stacklevel=3,
            )
        if tiny:
            warnings.warn(
                f"skipped {len(tiny)} images smaller than {MIN_SIDE} px on a side: {_listing(tiny)}",
                FolderWarning,
                stacklevel=3,
            )
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
        return read_rgb(self.samples[i][1])

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i before transforms; an unlabelled image gets an all-ignore (-1) label of its size."""
        if self.samples[i][2] is None:
            image = self.load_image(i)
            return image, np.full(image.shape[:2], -1, dtype=np.int64)
        return super().raw(i)

    def load_label(self, i: int) -> np.ndarray:
        """Class index per pixel; -1 where unlabelled, where the label file is missing or the value is no class."""
        path = self.samples[i][2]
        if path is None or not path.is_file():
            with Image.open(self.samples[i][1]) as im:
                return np.full((im.height, im.width), -1, dtype=np.int64)
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
