"""What every file-based dataset shares (spec §3.1): the item format, file readers with clear errors, label lookup
tables, the default-folder search and the `SegDataset` base class.

Every dataset item is a dict {"image": (3,res,res) float ImageNet-normalised, "label": (res,res) int64 with
-1 = ignore, "name": str, "index": int}. Folders follow the official layouts; a missing or malformed folder raises
`DatasetError` with the expected tree and the command that prepares it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from hpnb.data.transforms import train_transform, val_transform
from hpnb.metrics import IGNORE
from hpnb.utils import HpnbError, repo_root, shared_dir

# Commands quoted in error messages: the top-level command line (`python -m hpnb ...`).
DOWNLOAD_CMD = "python -m hpnb download {name} --root {root}"
FIVE_CROP_CMD = "python -m hpnb prepare five-crop --dataset {name} --root {root} --split {split}"


class DatasetError(HpnbError):
    """A dataset folder, list or file is missing or malformed; the message names the layout and the fix."""


_REFETCH = "Delete it and re-download / re-extract the dataset (or re-run the five-crop step for cropped/)."


def lut_from_pairs(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    """Lookup table (size,) int64: lut[fine] = coarse for the given pairs, IGNORE elsewhere."""
    lut = np.full(size, IGNORE, dtype=np.int64)
    for fine, coarse in pairs.items():
        lut[fine] = coarse
    return lut


TransformArg = None | str | Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]


def make_transform(transform: TransformArg, split: str, res: int | None) -> tuple[Callable, int | None]:
    """Resolve a dataset's transform argument: None -> "train" for split "train" else "val"; a callable is kept."""
    if callable(transform):
        return transform, res
    kind = transform or ("train" if split == "train" else "val")
    if kind == "train":
        return train_transform(res or 224), res or 224
    if kind == "val":
        return val_transform(res or 320), res or 320
    raise ValueError(f"transform must be None, 'train', 'val' or a callable, found {transform!r}")


def default_root(name: str, has_layout: Callable[[Path], bool] | None = None) -> Path:
    """Default folder of dataset `name`: the first of $HPNB_DATA/, ../shared/data/, <repo>/data/datasets/ + name
    that `has_layout`; else the first candidate ($HPNB_DATA) or the repository's data/datasets/NAME."""
    candidates = []
    if os.environ.get("HPNB_DATA"):
        candidates.append(Path(os.environ["HPNB_DATA"]) / name)
    if shared_dir() is not None:
        candidates.append(shared_dir() / "data" / name)
    candidates.append(repo_root() / "data" / "datasets" / name)
    for path in candidates:
        if has_layout is not None and has_layout(path):
            return path
    return candidates[0] if os.environ.get("HPNB_DATA") else candidates[-1]


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 array of an image file; DatasetError naming the file when PIL cannot read it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}\nRe-download or re-extract the dataset.") from None
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError; truncated files too
        raise DatasetError(f"corrupt image file: {path} ({err}).\n{_REFETCH}") from err


# ----------------------------------------------------------------------------------------------------------
# Photos as a person sees them: one reader for the folder dataset (training) and `hpnb.predict` (prediction)
# ----------------------------------------------------------------------------------------------------------

MAX_PIXELS = 16_000_000  # a larger photo is read at 1/f of its width and height (`reduction`)
PHOTO_ARRAYS = (
    "an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8 (0..255), uint16 (16-bit, 0..65535) or floats in "
    "[0, 1] (what scikit-image returns)"
)


def reduction(width: int, height: int) -> int:
    """The integer f by which a photo's sides are divided when it is read: 1 up to `MAX_PIXELS`, else the smallest f
    with width·height / f² under it (prediction holds ~200 bytes a pixel at K = 8: 16 MP is about 3 GB)."""
    f = 1
    while width * height > MAX_PIXELS * f * f:
        f += 1
    return f


def _eight_bit(values: np.ndarray, what: str) -> np.ndarray:
    """uint8 of a pixel array: uint8 as it is, 16-bit scaled by 255/65535, floats in [0, 1] by 255, bool as 0/255,
    other integers when they hold 0..255; HpnbError saying what was expected otherwise."""
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "u" and size == 1:
        return values
    if kind == "b":
        return values.astype(np.uint8) * 255
    if values.size == 0 or kind not in "uif":
        raise HpnbError(f"{what}: expected {PHOTO_ARRAYS}, found dtype {values.dtype} and shape {values.shape}")
    lo, hi = values.min(), values.max()
    if kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo and hi <= 1):
            raise HpnbError(
                f"{what}: expected floats in [0, 1] (what scikit-image returns), found {values.dtype} values in "
                f"[{lo:.4g}, {hi:.4g}]. Scale them first: a 0..255 float image with image.astype(np.uint8), any other "
                "range with (image - image.min()) / (image.max() - image.min())."
            )
        return np.floor(values * 255 + 0.5).astype(np.uint8)
    if kind == "u" and size == 2:  # 16-bit: 65535 is white
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if 0 <= lo and hi <= 255:  # e.g. int64 holding 0..255
        return values.astype(np.uint8)
    raise HpnbError(
        f"{what}: expected {PHOTO_ARRAYS}, found {values.dtype} values in [{lo}, {hi}]. A 16-bit image: pass "
        "image.astype(np.uint16)."
    )


def _pixels_of(im: Image.Image, what: str, own: bool) -> tuple[np.ndarray, int]:
    """(uint8 (H, W, 3), f) of a PIL image: the first frame, EXIF orientation applied, 16-bit and float modes scaled
    to 8 bits, sides divided by f = `reduction` (a JPEG decodes at the reduced scale). `own`: `im` may be changed."""
    w, h = im.size
    f = reduction(w, h)
    if f > 1 and own and im.format == "JPEG":
        im.draft(None, (max(1, w // f), max(1, h // f)))  # DCT scaling by 1/2, 1/4 or 1/8, at most 1/f
    if own:
        ImageOps.exif_transpose(im, in_place=True)  # turned the way the camera was held
    else:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # PIL's convert("RGB") clips these to white
        values = np.asarray(im)
        if im.mode == "I":  # 16-bit grey PNG in some Pillow versions, 32-bit TIFF in others
            lo, hi = values.min(initial=0), values.max(initial=0)
            if lo < 0 or hi > 65535:
                raise HpnbError(f"{what}: expected 8- or 16-bit pixels, found 32-bit values in [{lo}, {hi}]")
            values = values.astype(np.uint16)
        im = Image.fromarray(_eight_bit(values, what), "L")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    rest = reduction(*im.size)
    if rest > 1:
        im = im.reduce(rest)  # the mean of each rest x rest block
    return np.asarray(im.convert("RGB"), dtype=np.uint8), round(max(w, h) / max(im.size))


def photo_pixels(image) -> tuple[np.ndarray, int]:
    """`read_photo` of a file path, a PIL image or an array (`PHOTO_ARRAYS`), and the factor f by which the photo's
    sides were divided (1 unless it is over `MAX_PIXELS`)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # handled: read at 1/f
                with Image.open(path) as im:
                    return _pixels_of(im, str(path), own=True)
        except FileNotFoundError:
            if path.is_symlink():
                raise DatasetError(f"{path} is a link to a missing file ({os.readlink(path)})") from None
            raise DatasetError(f"image file missing: {path}") from None
        except Image.DecompressionBombError as err:  # neither OSError nor ValueError
            raise DatasetError(
                f"{path} is too large to open: {err} Downscale it first (or raise PIL.Image.MAX_IMAGE_PIXELS if you "
                "trust the file)."
            ) from err
        except HpnbError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # UnidentifiedImageError, truncated data, ...
            raise DatasetError(f"{path} is not a readable image ({err})") from err
    if isinstance(image, Image.Image):
        return _pixels_of(image, "the image", own=False)
    values = np.asarray(image)
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[2] not in (1, 3, 4):
        raise HpnbError(
            f"expected {PHOTO_ARRAYS}, found shape {values.shape}: channels first? Pass image.transpose(1, 2, 0)."
        )
    if values.ndim == 3 and values.shape[2] in (1, 3, 4):
        values = values[..., 0] if values.shape[2] == 1 else values[..., :3]
    elif values.ndim != 2:
        raise HpnbError(f"expected {PHOTO_ARRAYS}, found shape {values.shape}")
    pixels = np.ascontiguousarray(_eight_bit(values, "the image array"))
    if pixels.ndim == 3 and reduction(pixels.shape[1], pixels.shape[0]) == 1:
        return pixels, 1  # already what a reader returns
    return _pixels_of(Image.fromarray(pixels), "the image array", own=True)


def read_photo(image) -> np.ndarray:
    """uint8 (H, W, 3) of a photo as a person sees it, the one reader of the folder dataset and `hpnb.predict`: EXIF
    orientation applied, 16-bit and float pixels scaled to 8 bits, sides divided by `reduction` when it is over
    `MAX_PIXELS`. A path that is no readable image raises DatasetError naming it (and why, where PIL says)."""
    return photo_pixels(image)[0]


def read_index_png(path: Path) -> np.ndarray:
    """HxW integer array of a single-channel class-index PNG; DatasetError naming the file when unreadable."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"label file {path}: expected a single-channel class-index PNG (mode L or P), found mode {im.mode}."
                )
            return np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"label file missing: {path}\nRe-download or re-extract the dataset.") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"corrupt label file: {path} ({err}).\n{_REFETCH}") from err


def apply_lut(fine: np.ndarray, lut: np.ndarray, path: Path | str = "") -> np.ndarray:
    """int64 lut[fine]; DatasetError when a value falls outside the table."""
    if fine.size and (fine.min() < 0 or fine.max() >= len(lut)):
        raise DatasetError(f"label {path}: values must lie in [0, {len(lut)}), found [{fine.min()}, {fine.max()}]")
    return lut[fine.astype(np.int64)]


class SegDataset(torch.utils.data.Dataset):
    """Base class: a list of (name, image path, label path) samples, `raw(i)` loading and the online transform."""

    name: str = ""  # registry key, used in the commands quoted by errors
    classes: list[str] = []
    splits: tuple[str, ...] = ("train", "val")
    layout: str = ""  # expected folder tree, shown in errors

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        res: int | None = None,
        transform: TransformArg = None,
    ):
        if split not in self.splits:
            raise DatasetError(f"{type(self).__name__}: unknown split {split!r}; expected one of {list(self.splits)}.")
        self.root = Path(root) if root is not None else default_root(self.name, type(self).has_layout)
        self.split = split
        self.transform, self.res = make_transform(transform, split, res)
        self.samples: list[tuple[str, Path, Path | None]] = self._find_samples()
        if not self.samples:
            raise self._layout_error(f"split {split!r} is empty (0 samples found)")

    # -- to implement -----------------------------------------------------------------------------------
    @classmethod
    def has_layout(cls, root: Path) -> bool:
        """True when `root` looks like this dataset's folder (used to pick a default root)."""
        raise NotImplementedError

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        raise NotImplementedError

    def load_image(self, i: int) -> np.ndarray:
        """HxWx3 uint8 image of sample i."""
        return read_rgb(self.samples[i][1])

    def load_label(self, i: int) -> np.ndarray:
        """HxW int64 label of sample i in [0, n_classes) with -1 = ignore."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Number of ground-truth classes (ignore label -1 excluded)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, res={self.res}, root='{self.root}')"

    def prepare_command(self) -> str:
        """The command that downloads or prepares this dataset's folder."""
        return DOWNLOAD_CMD.format(name=self.name, root=self.root)

    def _layout_error(self, found: str) -> DatasetError:
        """DatasetError naming the folder, the expected tree, what was found and the command to run."""
        return DatasetError(
            f"{type(self).__name__} ({self.split}) at {self.root}: {found}.\n"
            f"Expected layout:\n{self.layout.rstrip()}\n"
            f"To get it: {self.prepare_command()}"
        )

    def _require_dir(self, path: Path) -> Path:
        """`path` if it is a folder, else the layout error."""
        if not self.root.is_dir():
            raise self._layout_error("the dataset folder does not exist")
        if not path.is_dir():
            raise self._layout_error(f"missing folder {path.relative_to(self.root)}/")
        return path

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i before transforms: (HxWx3 uint8 image, HxW int64 label, -1 = ignore)."""
        image, label = self.load_image(i), self.load_label(i)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{self.samples[i][1]}: image is {image.shape[0]}x{image.shape[1]} but its label "
                f"{self.samples[i][2]} is {label.shape[0]}x{label.shape[1]} (H x W); "
                f"the pair is corrupt.\n{_REFETCH}"
            )
        return image, label

    def __getitem__(self, i: int) -> dict:
        image, label = self.raw(i)
        x, y = self.transform(image, label)
        return {"image": x, "label": y, "name": self.samples[i][0], "index": int(i)}


class Picked(torch.utils.data.Dataset):
    """Items `indices` of `dataset`, in that order: e.g. the few frames a figure uses out of a long split, so that
    only their features are computed. It has a feature cache of its own (`hpnb.features.dataset_key`): the indices
    are part of its key, and its dataset's split, root and transform carry over."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < len(dataset)]
        if bad or not self.indices:
            raise DatasetError(
                f"Picked: expected indices in [0, {len(dataset)}) of {dataset!r}, "
                f"found {bad[:5] if bad else 'none at all'}"
            )
        for attr in ("split", "root", "transform", "classes"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))
        self.cache_name = f"{getattr(dataset, 'cache_name', type(dataset).__name__)}-picked"
        digest = hashlib.sha1(",".join(map(str, self.indices)).encode()).hexdigest()[:12]
        self.cache_extra = f"{getattr(dataset, 'cache_extra', '')} picked {len(self.indices)}: {digest}"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]

    def __repr__(self) -> str:
        return f"Picked({self.dataset!r}, {len(self.indices)} items)"
