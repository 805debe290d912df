"""The data of HP (spec §3): one registry for every dataset (the toy world, CamVid, COCO-Stuff-27, Cityscapes-27,
Potsdam-3), their transforms and photometric augmentation, and the five-crop training set.

    hpnb.data.get_dataset("toy", "val", n=100)        # any registered dataset, the same way
    hpnb.data.DATASETS                                # name -> class
    python -m hpnb prepare five-crop --dataset cocostuff27 --root DIR   # spec §3.2

One file per dataset (`camvid`, `cocostuff27`, `cityscapes27`, `potsdam3`, `toyworld`, `folder`: your own images), `transforms` (normalisation,
resize/crop, photometric augmentation), `five_crop`, `base` (what file datasets share) and `registry`.
"""

from hpnb.data.base import (
    DOWNLOAD_CMD,
    FIVE_CROP_CMD,
    DatasetError,
    Picked,
    SegDataset,
    TransformArg,
    apply_lut,
    default_root,
    lut_from_pairs,
    make_transform,
    read_index_png,
    read_rgb,
)
from hpnb.data.camvid import CAMVID_CLASSES, CamVid
from hpnb.data.cityscapes27 import CITYSCAPES27_CLASSES, Cityscapes27, cityscapes_label_to_27
from hpnb.data.cocostuff27 import COCO27_CLASSES, CocoStuff27, coco_fine_to_coarse
from hpnb.data.five_crop import CroppedDataset, cropped_dir, five_crop, five_crop_boxes
from hpnb.data.folder import FolderWarning, ImageFolder, example_folder
from hpnb.data.potsdam3 import POTSDAM3_CLASSES, Potsdam3, potsdam_fine_to_coarse
from hpnb.data.registry import DATASETS, FILE_DATASETS, data_root, get_dataset
from hpnb.data.toyworld import ToyWorld
from hpnb.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotometricParams,
    SegTransform,
    apply_photometric,
    center_box,
    denormalize,
    normalize,
    photometric_augment,
    resized_size,
    sample_photometric_params,
    train_transform,
    val_transform,
)

__all__ = [
    "DATASETS",
    "FILE_DATASETS",
    "get_dataset",
    "data_root",
    "default_root",
    "SegDataset",
    "DatasetError",
    "Picked",
    "TransformArg",
    "make_transform",
    "read_rgb",
    "read_index_png",
    "apply_lut",
    "lut_from_pairs",
    "DOWNLOAD_CMD",
    "FIVE_CROP_CMD",
    "ToyWorld",
    "ImageFolder",
    "FolderWarning",
    "example_folder",
    "CamVid",
    "CocoStuff27",
    "Cityscapes27",
    "Potsdam3",
    "CroppedDataset",
    "CAMVID_CLASSES",
    "COCO27_CLASSES",
    "CITYSCAPES27_CLASSES",
    "POTSDAM3_CLASSES",
    "coco_fine_to_coarse",
    "cityscapes_label_to_27",
    "potsdam_fine_to_coarse",
    "five_crop",
    "five_crop_boxes",
    "cropped_dir",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "denormalize",
    "SegTransform",
    "train_transform",
    "val_transform",
    "resized_size",
    "center_box",
    "PhotometricParams",
    "sample_photometric_params",
    "apply_photometric",
    "photometric_augment",
]
