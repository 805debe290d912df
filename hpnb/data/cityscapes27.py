"""Cityscapes-27 (spec §3.1): fine annotations, labelIds 7..33 as 27 classes (needs a login to download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpnb.data.base import DOWNLOAD_CMD, SegDataset, apply_lut, lut_from_pairs, read_index_png

CITYSCAPES27_CLASSES = [
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
]


def cityscapes_label_to_27() -> np.ndarray:
    """(256,) lookup table: labelId - 7 for labelIds 7..33, -1 otherwise (spec §3.1)."""
    return lut_from_pairs({lid: lid - 7 for lid in range(7, 34)})


class Cityscapes27(SegDataset):
    """Cityscapes fine annotations, 27 classes = labelIds 7..33 (label = labelId - 7; others -> -1)."""

    name = "cityscapes27"
    classes = CITYSCAPES27_CLASSES
    splits = ("train", "val", "test")
    layout = """  ROOT/
    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""
    lut = cityscapes_label_to_27()

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()

    def prepare_command(self) -> str:
        cmd = DOWNLOAD_CMD.format(name=self.name, root=self.root)
        return f"{cmd}   (prints how to get it: Cityscapes needs a login)"

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        images = self._require_dir(self.root / "leftImg8bit" / self.split)
        labels = self._require_dir(self.root / "gtFine" / self.split)
        samples = []
        for p in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            label = labels / p.parent.name / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise self._layout_error(f"image {p.name} has no label {label.relative_to(self.root)}")
            samples.append((stem, p, label))
        return samples

    def load_label(self, i: int) -> np.ndarray:
        path = self.samples[i][2]
        return apply_lut(read_index_png(path), self.lut, path)
