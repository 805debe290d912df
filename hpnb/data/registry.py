"""The one registry of datasets: every caller (trainer, evaluation, command line, notebooks) gets a dataset here,
the toy world included.

    hpnb.data.get_dataset("toy", "val", n=100, res=224)          # the built-in toy world, 100 scenes
    hpnb.data.get_dataset("camvid", "val", res=224)              # files under data_root("camvid")
    hpnb.data.get_dataset("cocostuff27", "train", crop_type="five")  # the five-crop training set (spec §3.2)
"""

from __future__ import annotations

from pathlib import Path

import torch

from hpnb.data.base import DatasetError, SegDataset, TransformArg, default_root
from hpnb.data.camvid import CamVid
from hpnb.data.cityscapes27 import Cityscapes27
from hpnb.data.cocostuff27 import CocoStuff27
from hpnb.data.five_crop import CroppedDataset
from hpnb.data.folder import ImageFolder
from hpnb.data.potsdam3 import Potsdam3
from hpnb.data.toyworld import ToyWorld

DATASETS: dict[str, type] = {
    "toy": ToyWorld,
    "camvid": CamVid,
    "cocostuff27": CocoStuff27,
    "cityscapes27": Cityscapes27,
    "potsdam3": Potsdam3,
    "folder": ImageFolder,  # your own images: data_root = any folder of photos, labels optional
}
FILE_DATASETS = {name: cls for name, cls in DATASETS.items() if issubclass(cls, SegDataset)}  # read from folders


def data_root(name: str) -> Path:
    """Default folder of a registered dataset: the first complete of $HPNB_DATA/, ../shared/data/,
    <repo>/data/datasets/ + name."""
    cls = DATASETS.get(name)
    return default_root(name, cls.has_layout if cls is not None and issubclass(cls, SegDataset) else None)


def get_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    res: int | None = None,
    transform: TransformArg = None,
    crop_type: str | None = None,
    n: int | None = None,
    seed: int = 0,
    n_clusters: int | None = None,
    toy_link: float = 0.0,
) -> torch.utils.data.Dataset:
    """A dataset by registry name. `n` keeps the first n items (the toy world generates exactly n scenes; `seed`
    is the toy world's); `crop_type="five"` reads the five-crop folder of a file dataset; `n_clusters` is the
    number of clusters of an unlabelled "folder" (ignored by the other datasets); `toy_link` is the toy world's share
    of class-own materials (`hpnb.data.toyworld.SIGNATURES`; 0, the shipped world, when not given)."""
    key = name.lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    if key == "toy":  # generated in memory: root, crop_type and the "train"/"val" transforms do not apply
        kwargs = {"res": res} if res is not None else {}
        if callable(transform):
            kwargs["transform"] = transform
        return ToyWorld(split=split, n=n, seed=seed, link=toy_link, **kwargs)
    if crop_type is not None:
        dataset = CroppedDataset(root, DATASETS[key], split, crop_type=crop_type, res=res, transform=transform)
        if key == "folder":  # the class list is the folder's own (classes.txt), not a fixed one
            dataset.classes = ImageFolder.read_classes(dataset.root)
    elif key == "folder":
        dataset = ImageFolder(root, split, res, transform, n_clusters=n_clusters)
    else:
        dataset = DATASETS[key](root, split, res, transform)
    if n is not None:
        if n < 1:
            raise DatasetError(f"n must be at least 1, found {n}")
        dataset.samples = dataset.samples[:n]  # the first n items; the feature cache keys on the length
    return dataset
