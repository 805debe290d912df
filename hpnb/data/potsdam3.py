"""Potsdam-3 as distributed by IIC/STEGO (spec §3.1): 200x200 RGBIR tiles, 6 classes merged into 3."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpnb.data.base import _REFETCH, DatasetError, SegDataset, apply_lut, lut_from_pairs
from hpnb.metrics import IGNORE

POTSDAM3_CLASSES = ["roads and cars", "buildings and clutter", "trees and vegetation"]


def potsdam_fine_to_coarse() -> np.ndarray:
    """(256,) lookup table of Potsdam's 6 -> 3 classes: {0,4}->0, {1,5}->1, {2,3}->2, 255 -> -1."""
    return lut_from_pairs({0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2})


def _load_mat(path: Path, key: str) -> np.ndarray:
    """Array `key` of a MATLAB file; DatasetError naming the file when unreadable or missing the key."""
    import scipy.io

    if not path.is_file():
        raise DatasetError(f"file missing: {path}\nRe-download or re-extract the dataset.")
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as err:  # scipy raises several types (ValueError, MatReadError, TypeError) on bad files
        raise DatasetError(f"corrupt .mat file: {path} ({err}).\n{_REFETCH}") from err
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{path}: expected key {key!r}, found keys {keys}")
    return np.asarray(data[key])


class Potsdam3(SegDataset):
    """ISPRS Potsdam as distributed by IIC/STEGO: 200x200 RGBIR tiles, 6 classes merged into 3 (spec §3.1)."""

    name = "potsdam3"
    classes = POTSDAM3_CLASSES
    splits = ("train", "val", "unlabelled_train", "all")
    layout = """  ROOT/
    imgs/<id>.mat   (key "img": HxWx4 RGBIR, first 3 channels used)
    gt/<id>.mat     (key "gt": HxW, 0-5, 255 = ignore)
    labelled_train.txt  labelled_test.txt  unlabelled_train.txt  all.txt   (one id per line)"""
    list_files = {
        "train": "labelled_train.txt",
        "val": "labelled_test.txt",
        "unlabelled_train": "unlabelled_train.txt",
        "all": "all.txt",
    }
    lut = potsdam_fine_to_coarse()

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "imgs").is_dir()

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        self._require_dir(self.root / "imgs")
        ids_file = self.root / self.list_files[self.split]
        if not ids_file.is_file():
            raise self._layout_error(f"missing split list {ids_file.name}")
        ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        return [(i, self.root / "imgs" / f"{i}.mat", self.root / "gt" / f"{i}.mat") for i in ids]

    def load_image(self, i: int) -> np.ndarray:
        path = self.samples[i][1]
        img = _load_mat(path, "img")
        if img.ndim != 3 or img.shape[2] < 3:
            raise DatasetError(f"{path}: expected an HxWxC (C>=3) image under 'img', found shape {img.shape}")
        rgb = img[..., :3].astype(np.float64)
        if np.issubdtype(img.dtype, np.floating) and rgb.max(initial=0.0) <= 1.0:
            rgb = rgb * 255.0  # floats in [0,1], as STEGO's to_pil (mul 255, truncate)
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def load_label(self, i: int) -> np.ndarray:
        path = self.samples[i][2]
        if not path.is_file() and self.split in ("unlabelled_train", "all"):
            h, w = self.load_image(i).shape[:2]
            return np.full((h, w), IGNORE, dtype=np.int64)  # unlabelled tile
        gt = _load_mat(path, "gt")
        if gt.ndim == 3 and gt.shape[2] == 1:
            gt = gt[..., 0]
        return apply_lut(gt, self.lut, path)
