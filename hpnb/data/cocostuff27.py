"""COCO-Stuff-27 (spec §3.1): the curated image lists, 182 fine ids mapped to 27 coarse classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpnb.data.base import SegDataset, TransformArg, apply_lut, lut_from_pairs, read_index_png
from hpnb.utils import shared_dir

COCO27_CLASSES = [
    "electronic",
    "appliance",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
]

# COCO-Stuff fine id (0..181) -> coarse id (0..26); 255 (unlabeled) -> -1.  Things: inclusive id ranges.
_COCO_THINGS = [
    ((0, 0), 9),
    ((1, 8), 11),
    ((9, 14), 8),
    ((15, 24), 7),
    ((25, 32), 6),
    ((33, 42), 10),
    ((43, 50), 5),
    ((51, 60), 2),
    ((61, 70), 3),
    ((71, 76), 0),
    ((77, 82), 1),
    ((83, 90), 4),
]
_COCO_STUFF = {
    12: [101, 102],
    13: [100, 113, 114, 115, 116, 117],
    14: [120, 121, 152, 169],
    15: [97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164],
    16: [99, 131, 138, 142],
    17: [91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167],
    18: [170, 171, 172, 173, 174, 175, 176],
    19: [179, 180],
    20: [94, 95, 127, 150, 157, 165],
    21: [110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158],
    22: [93, 96, 118, 123, 128, 133, 141, 162, 168],
    23: [105, 156],
    24: [126, 134, 149, 159, 161, 181],
    25: [98, 112, 137, 145, 163],
    26: [119, 147, 154, 177, 178],
}


def coco_fine_to_coarse() -> np.ndarray:
    """(256,) lookup table of the COCO-Stuff 182 -> 27 class mapping (spec §3.1); 255 and unused ids -> -1."""
    pairs = {fine: coarse for (lo, hi), coarse in _COCO_THINGS for fine in range(lo, hi + 1)}
    pairs.update({fine: coarse for coarse, fines in _COCO_STUFF.items() for fine in fines})
    return lut_from_pairs(pairs)


class CocoStuff27(SegDataset):
    """COCO-Stuff-27 (spec §3.1): curated image lists, 182 fine ids mapped to 27 coarse classes."""

    name = "cocostuff27"
    classes = COCO27_CLASSES
    layout = """  ROOT/
    images/{train2017,val2017}/<id>.jpg
    annotations/{train2017,val2017}/<id>.png      (stuffthingmaps: fine ids 0-181, 255 = unlabeled)
    curated/train2017/Coco164kFull_Stuff_Coarse.txt  and  curated/val2017/Coco164kFull_Stuff_Coarse_7.txt
      (or flat: curated/train2017_Coco164kFull_Stuff_Coarse.txt ...)"""
    split_dirs = {"train": "train2017", "val": "val2017"}
    list_names = {"train": "Coco164kFull_Stuff_Coarse", "val": "Coco164kFull_Stuff_Coarse_7"}
    lut = coco_fine_to_coarse()

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        res: int | None = None,
        transform: TransformArg = None,
        *,
        list_name: str | None = None,
    ):
        self.list_name = list_name or self.list_names.get(split, "")
        super().__init__(root, split, res, transform)

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "images").is_dir() and (root / "annotations").is_dir()

    def curated_list(self) -> Path:
        """This split's image-id list: ROOT/curated (nested or flat names), else ../shared/data/cocostuff27/curated."""
        split_dir = self.split_dirs[self.split]
        folders = [self.root / "curated"]
        if shared_dir() is not None:
            folders.append(shared_dir() / "data" / "cocostuff27" / "curated")
        for folder in folders:
            for path in (folder / split_dir / f"{self.list_name}.txt", folder / f"{split_dir}_{self.list_name}.txt"):
                if path.is_file():
                    return path
        raise self._layout_error(f"no curated list {split_dir}/{self.list_name}.txt under {folders[0]}")

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        split_dir = self.split_dirs[self.split]
        images = self._require_dir(self.root / "images" / split_dir)
        labels = self._require_dir(self.root / "annotations" / split_dir)
        ids = [line.strip() for line in self.curated_list().read_text().splitlines() if line.strip()]
        return [(i, images / f"{i}.jpg", labels / f"{i}.png") for i in ids]

    def load_label(self, i: int) -> np.ndarray:
        path = self.samples[i][2]
        return apply_lut(read_index_png(path), self.lut, path)
