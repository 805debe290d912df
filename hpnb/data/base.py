"""What every file-based dataset shares (spec §3.1): the item format, file readers with clear errors, label lookup
tables, the default-folder search and the `SegDataset` base class.

Every dataset item is a dict {"image": (3,res,res) float ImageNet-normalised, "label": (res,res) int64 with
-1 = ignore, "name": str, "index": int}. Folders follow the official layouts; a missing or malformed folder raises
`DatasetError` with the expected tree and the command that prepares it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

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
