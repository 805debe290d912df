"""Five-crop (spec §3.2): the cropped training set HP uses for COCO-Stuff and Cityscapes, its writer and its reader.

python -m hpnb prepare five-crop --dataset cocostuff27 --root DIR --split train
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hpnb.data.base import FIVE_CROP_CMD, DatasetError, SegDataset, TransformArg, default_root, read_index_png


def cropped_dir(root: Path, name: str, split: str, crop_type: str = "five", crop_ratio: float = 0.5) -> Path:
    """Folder of precomputed crops: ROOT/cropped/<name>_<crop_type>_crop_<ratio> (HP layout, spec §3.1)."""
    return Path(root) / "cropped" / f"{name}_{crop_type}_crop_{crop_ratio}"


class CroppedDataset(SegDataset):
    """Five-crop training set written by `five_crop` (spec §3.2): img/<split>/<k>.jpg, label/<split>/<k>.png (+1)."""

    splits = ("train", "val", "test", "unlabelled_train", "all")

    def __init__(
        self,
        root: str | Path | None,
        source: type[SegDataset],
        split: str = "train",
        crop_type: str = "five",
        crop_ratio: float = 0.5,
        res: int | None = None,
        transform: TransformArg = None,
    ):
        self.name, self.crop_type, self.crop_ratio = source.name, crop_type, crop_ratio
        self.classes = source.classes
        super().__init__(
            root if root is not None else default_root(source.name, source.has_layout), split, res, transform
        )

    @property
    def folder(self) -> Path:
        return cropped_dir(self.root, self.name, self.split, self.crop_type, self.crop_ratio)

    @property
    def layout(self) -> str:  # type: ignore[override]
        rel = self.folder.relative_to(self.root)
        return (
            f"  ROOT/\n    {rel}/img/{self.split}/<k>.jpg\n"
            f"    {rel}/label/{self.split}/<k>.png   (label + 1, 0 = ignore)"
        )

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "cropped").is_dir()

    def prepare_command(self) -> str:
        return (
            FIVE_CROP_CMD.format(name=self.name, root=self.root, split=self.split)
            + "\n  (source folder read-only? add --out DIR and pass root=DIR here)"
        )

    def _find_samples(self) -> list[tuple[str, Path, Path | None]]:
        images = self._require_dir(self.folder / "img" / self.split)
        labels = self._require_dir(self.folder / "label" / self.split)
        files = sorted((p for p in images.glob("*.jpg") if p.stem.isdigit()), key=lambda p: int(p.stem))
        return [(p.stem, p, labels / f"{p.stem}.png") for p in files]

    def load_label(self, i: int) -> np.ndarray:
        stored = read_index_png(self.samples[i][2]).astype(np.int64)
        return stored - 1  # stored as label + 1 so that -1 fits in a PNG


# ----------------------------------------------------------------------------------------------------------
# Five-crop preparation (spec §3.2)
# ----------------------------------------------------------------------------------------------------------


def five_crop_boxes(h: int, w: int, crop_ratio: float = 0.5) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the 4 corners + centre in torchvision.five_crop order (tl, tr, bl, br, centre)."""
    ch, cw = int(crop_ratio * h), int(crop_ratio * w)
    if ch < 1 or cw < 1:
        raise ValueError(f"crop_ratio {crop_ratio} leaves an empty crop of a {h}x{w} image")
    ct, cl = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return [(0, 0, ch, cw), (0, w - cw, ch, cw), (h - ch, 0, ch, cw), (h - ch, w - cw, ch, cw), (ct, cl, ch, cw)]


def five_crop(
    dataset: SegDataset, out_root: str | Path, name: str, split: str, crop_ratio: float = 0.5, progress: bool = True
) -> Path:
    """Write 5 crops of each `dataset.raw(i)` (spec §3.2): k = 5*i + crop, JPEG image, PNG label + 1; returns folder."""
    from tqdm.auto import tqdm

    folder = cropped_dir(Path(out_root), name, split, "five", crop_ratio)
    img_dir, lab_dir = folder / "img" / split, folder / "label" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc=f"five-crop {name}/{split}", disable=not progress):
        image, label = dataset.raw(i)
        stored = label + 1
        if stored.min(initial=0) < 0 or stored.max(initial=0) > 255:
            raise DatasetError(f"sample {i}: label + 1 must fit in 8 bits, found [{stored.min()}, {stored.max()}]")
        for j, (top, left, ch, cw) in enumerate(five_crop_boxes(*label.shape, crop_ratio)):
            k = 5 * i + j
            Image.fromarray(image[top : top + ch, left : left + cw]).save(img_dir / f"{k}.jpg")
            Image.fromarray(stored[top : top + ch, left : left + cw].astype(np.uint8)).save(lab_dir / f"{k}.png")
    return folder
