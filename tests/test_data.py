"""Tests of hpnb.data: transforms, photometric augmentation, label maps, datasets, five-crop and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from hpnb import data as D
from hpnb.__main__ import prepare_main
from hpnb.utils import HpnbError, shared_dir

CAMVID = shared_dir() / "data" / "camvid" if shared_dir() is not None else None
CURATED = shared_dir() / "data" / "cocostuff27" / "curated" if shared_dir() is not None else None
needs_camvid = pytest.mark.skipif(
    CAMVID is None or not CAMVID.is_dir(),
    reason="real CamVid not found: ../shared/data/camvid is absent (set HPNB_SHARED)",
)


# ---------------------------------------------------------------------------------------------- helpers


def rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def save_jpg(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def make_camvid(root: Path, n: int = 2, h: int = 40, w: int = 60, split: str = "train") -> Path:
    """A tiny CamVid-layout folder; labels hold 0..11 (11 = unlabelled)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        save_jpg(rand_image(h, w, i), root / split / "images" / f"img{i}.jpg")
        save_png(rng.integers(0, 12, (h, w)), root / split / "labels" / f"img{i}.png")
    return root


# ---------------------------------------------------------------------------------------------- normalisation


def test_normalize_denormalize_roundtrip_3d_and_4d():
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(D.denormalize(D.normalize(x)), x, atol=1e-6)
    assert torch.allclose(D.normalize(x[0]), D.normalize(x)[0])
    mean_colour = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1).expand(3, 4, 4)
    assert D.normalize(mean_colour).abs().max() < 1e-6
    with pytest.raises(ValueError, match="3,H,W"):
        D.normalize(torch.rand(4, 5, 5))


# ---------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("h,w", [(360, 480), (480, 360), (37, 53), (100, 100)])
def test_resize_and_crop_geometry_match_torchvision(h, w):
    img = Image.fromarray(rand_image(h, w))
    for res in (28, 224):
        assert T.Resize(res)(img).size[::-1] == D.resized_size(h, w, res)
    nh, nw = D.resized_size(h, w, 224)
    canvas = torch.arange(nh * nw).view(1, nh, nw)
    top, left = D.center_box(nh, nw, 224)
    assert torch.equal(TF.center_crop(canvas, [224, 224]), canvas[:, top : top + 224, left : left + 224])


def test_seg_transform_equals_torchvision_pipeline_and_labels_stay_aligned():
    image = rand_image(37, 53)
    label = np.random.default_rng(2).integers(0, 20, (37, 53))
    x, y = D.SegTransform(28)(Image.fromarray(image), label)
    ref = T.Compose(
        [
            T.Resize(28, T.InterpolationMode.NEAREST),
            T.CenterCrop(28),
            T.ToTensor(),
            T.Normalize(D.IMAGENET_MEAN, D.IMAGENET_STD),
        ]
    )(Image.fromarray(image))
    assert torch.allclose(x, ref, atol=1e-6)
    # the label takes exactly the same nearest-neighbour pixels as the image
    ref_label = T.Compose([T.Resize(28, T.InterpolationMode.NEAREST), T.CenterCrop(28)])(
        Image.fromarray(label.astype(np.uint8))
    )
    assert torch.equal(y, torch.from_numpy(np.asarray(ref_label).astype(np.int64)))


def test_seg_transform_shapes_dtypes_and_label_values():
    label = np.random.default_rng(3).choice([-1, 0, 3, 7], size=(45, 61))
    for res in (30, 392):  # any int: hpnb's patch-14 backbone uses 224, 392, ...
        x, y = D.SegTransform(res)(rand_image(45, 61), label)
        assert x.shape == (3, res, res) and x.dtype == torch.float32
        assert y.shape == (res, res) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {-1, 0, 3, 7}
        assert D.denormalize(x).min() >= -1e-5 and D.denormalize(x).max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="positive int"):
        D.SegTransform(0)


def test_center_crop_keeps_the_middle_columns():
    label = np.tile(np.arange(30), (10, 1))  # value = column index, shorter side already 10
    _, y = D.SegTransform(10)(rand_image(10, 30), label)
    assert torch.equal(y[0], torch.arange(10, 20))


def test_bilinear_changes_the_image_but_never_the_label():
    image, label = rand_image(40, 60), np.random.default_rng(4).integers(0, 5, (40, 60))
    xn, yn = D.SegTransform(24, "nearest")(image, label)
    xb, yb = D.SegTransform(24, "bilinear")(image, label)
    assert not torch.allclose(xn, xb) and torch.equal(yn, yb)
    assert D.train_transform().res == 224 and D.val_transform().res == 320


# ---------------------------------------------------------------------------------------------- photometric


def test_photometric_augment_is_reproducible_with_a_generator():
    x = D.normalize(torch.rand(2, 3, 16, 16))
    a = D.photometric_augment(x, torch.Generator().manual_seed(0))
    b = D.photometric_augment(x, torch.Generator().manual_seed(0))
    c = D.photometric_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)
    assert D.photometric_augment(x[0], torch.Generator().manual_seed(0)).shape == (3, 16, 16)
    # images of a batch get independent draws
    same = D.photometric_augment(torch.stack([x[0], x[0]]), torch.Generator().manual_seed(5))
    assert not torch.allclose(same[0], same[1])


def test_official_variant_clamps_the_normalised_tensor():
    x = D.normalize(torch.rand(3, 16, 16))
    assert (x < 0).any()
    identity = D.PhotometricParams(
        order=(0, 1, 2, 3), brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, grayscale=False, blur_sigma=None
    )
    # even an "identity" jitter cuts the normalised values to [0, 1]: the harsh official quirk (spec §2.8)
    assert torch.allclose(D.apply_photometric(x, identity), x.clamp(0, 1), atol=1e-5)
    official = D.photometric_augment(x, torch.Generator().manual_seed(0), jitter_after_normalise=True)
    gentle = D.photometric_augment(x, torch.Generator().manual_seed(0), jitter_after_normalise=False)
    assert not torch.allclose(official, gentle, atol=1e-2)
    assert D.denormalize(gentle).min() > -1e-4 and D.denormalize(gentle).max() < 1 + 1e-4


def test_photometric_parameter_ranges_and_rates():
    g = torch.Generator().manual_seed(0)
    draws = [D.sample_photometric_params(g) for _ in range(400)]
    for p in draws:
        assert sorted(p.order) == [0, 1, 2, 3]
        assert all(0.7 <= f <= 1.3 for f in (p.brightness, p.contrast, p.saturation)) and -0.1 <= p.hue <= 0.1
        assert p.blur_sigma is None or 0.1 <= p.blur_sigma <= 2.0
    assert 0.13 < np.mean([p.grayscale for p in draws]) < 0.27
    assert 0.42 < np.mean([p.blur_sigma is not None for p in draws]) < 0.58


# ---------------------------------------------------------------------------------------------- label maps


def test_coco_182_to_27_mapping():
    lut = D.coco_fine_to_coarse()
    assert len(D.COCO27_CLASSES) == 27 == len(set(D.COCO27_CLASSES))
    assert ((lut[:182] >= 0) & (lut[:182] < 27)).all() and (lut[182:] == -1).all()
    assert set(lut[:182].tolist()) == set(range(27))
    assert (lut[:91] < 12).all() and (lut[91:182] >= 12).all()  # things are 0..11, stuff 12..26
    name = lambda fine: D.COCO27_CLASSES[lut[fine]]  # noqa: E731
    assert (name(0), name(3), name(16), name(72), name(105), name(156), name(178), name(171), name(255 - 255)) == (
        "person",
        "vehicle",
        "animal",
        "electronic",
        "sky",
        "sky",
        "water",
        "wall",
        "person",
    )
    assert lut[255] == -1


def test_cityscapes_and_potsdam_label_maps():
    lut = D.cityscapes_label_to_27()
    assert lut[7] == 0 and D.CITYSCAPES27_CLASSES[lut[7]] == "road"
    assert D.CITYSCAPES27_CLASSES[lut[26]] == "car" and D.CITYSCAPES27_CLASSES[lut[33]] == "bicycle"
    assert lut[6] == -1 and lut[34] == -1 and lut[0] == -1 and len(D.CITYSCAPES27_CLASSES) == 27
    plut = D.potsdam_fine_to_coarse()
    assert plut[[0, 4, 1, 5, 2, 3, 255]].tolist() == [0, 0, 1, 1, 2, 2, -1]


# ---------------------------------------------------------------------------------------------- CamVid (real data)


@pytest.mark.camvid
@needs_camvid
def test_camvid_real_splits_labels_and_shapes():
    sizes = {s: len(D.CamVid(CAMVID, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    train, val = D.CamVid(CAMVID, "train"), D.CamVid(CAMVID, "val")
    assert train.n_classes == 11 and train.classes[0] == "Sky" and train.classes[-1] == "Bicyclist"
    image, label = train.raw(0)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8 and label.shape == (360, 480)
    assert set(np.unique(label).tolist()) <= set(range(-1, 11)) and (label == -1).any()
    item = train[0]
    assert item["image"].shape == (3, 224, 224) and item["label"].shape == (224, 224)
    assert item["name"] == train.samples[0][0] and item["index"] == 0
    assert val[3]["image"].shape == (3, 320, 320)
    assert D.CamVid(CAMVID, "val", res=392)[0]["label"].shape == (392, 392)


@pytest.mark.camvid
@needs_camvid
def test_camvid_default_root_is_the_shared_copy():
    assert D.data_root("camvid") == CAMVID
    assert D.get_dataset("camvid", "test").root == CAMVID


# ------------------------------------------------------------------------------------ COCO-Stuff-27 (synthetic)


def make_coco(root: Path, nested: bool = True) -> list[str]:
    ids = ["000000000139", "000000000724", "000000000785"]
    for k, i in enumerate(ids):
        save_jpg(rand_image(12, 16, k), root / "images" / "val2017" / f"{i}.jpg")
        fine = np.zeros((12, 16), np.uint8)
        fine[:, 4:8], fine[:, 8:12], fine[:, 12:] = 105, 255, 177  # person | sky | unlabeled | water
        save_png(fine, root / "annotations" / "val2017" / f"{i}.png")
    lst = (
        root
        / "curated"
        / ("val2017/Coco164kFull_Stuff_Coarse_7.txt" if nested else "val2017_Coco164kFull_Stuff_Coarse_7.txt")
    )
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(ids[::-1]) + "\n")
    return ids[::-1]


@pytest.mark.parametrize("nested", [True, False])
def test_cocostuff27_synthetic_folder_maps_182_to_27(tmp_path, nested):
    ids = make_coco(tmp_path, nested)
    ds = D.CocoStuff27(tmp_path, "val", res=16)
    assert len(ds) == 3 and ds.n_classes == 27 and [s[0] for s in ds.samples] == ids
    _, label = ds.raw(1)
    person, sky, water = (D.COCO27_CLASSES.index(c) for c in ("person", "sky", "water"))
    assert label[0].tolist() == [person] * 4 + [sky] * 4 + [-1] * 4 + [water] * 4
    item = ds[0]
    assert item["name"] == ids[0] and item["image"].shape == (3, 16, 16)
    assert set(item["label"].unique().tolist()) == {-1, person, sky, water}


@pytest.mark.skipif(CURATED is None or not CURATED.is_dir(), reason="../shared/data/cocostuff27/curated is absent")
def test_curated_list_line_counts_and_shared_fallback(tmp_path):
    count = lambda name: sum(1 for line in (CURATED / name).read_text().splitlines() if line.strip())  # noqa: E731
    assert count("train2017_Coco164kFull_Stuff_Coarse.txt") == 97702
    assert count("val2017_Coco164kFull_Stuff_Coarse_7.txt") == 2175
    assert count("train2017_Coco164kFull_Stuff_Coarse_7.txt") == 49629
    # a COCO folder without curated/ falls back to the shared lists
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    (tmp_path / "annotations" / "val2017").mkdir(parents=True)
    assert len(D.CocoStuff27(tmp_path, "val")) == 2175


# ---------------------------------------------------------------------------- Cityscapes / Potsdam (synthetic)


def test_cityscapes27_synthetic_folder(tmp_path):
    for city in ("aachen", "bremen"):
        stem = f"{city}_000000_000019"
        save_png(rand_image(8, 16), tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        ids = np.array([[0, 6, 7, 26, 33, 34, 255, 24]] * 8, np.uint8).repeat(2, axis=1)
        save_png(ids, tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
    ds = D.Cityscapes27(tmp_path, "val", res=8)
    assert len(ds) == 2 and ds.samples[0][0] == "aachen_000000_000019" and ds.n_classes == 27
    _, label = ds.raw(1)
    assert label[0, ::2].tolist() == [-1, -1, 0, 19, 26, -1, -1, 17]
    assert ds[0]["label"].shape == (8, 8)


def make_potsdam(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in ("a_0", "a_1", "u_0"):
        img = rng.random((20, 20, 4)).astype(np.float32)  # RGBIR floats in [0,1], as distributed
        (root / "imgs").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "imgs" / f"{i}.mat", {"img": img})
        if i.startswith("a"):
            gt = np.array([[0, 1, 2, 3, 4, 5, 255, 0, 0, 0]] * 20, np.uint8).repeat(2, axis=1)
            (root / "gt").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(root / "gt" / f"{i}.mat", {"gt": gt})
    (root / "labelled_train.txt").write_text("a_0\n")
    (root / "labelled_test.txt").write_text("a_1\n")
    (root / "unlabelled_train.txt").write_text("u_0\n")
    (root / "all.txt").write_text("a_0\na_1\nu_0\n")


def test_potsdam3_synthetic_mat_files(tmp_path):
    make_potsdam(tmp_path)
    train, val = D.Potsdam3(tmp_path, "train"), D.Potsdam3(tmp_path, "val")
    assert (len(train), len(val), len(D.Potsdam3(tmp_path, "all"))) == (1, 1, 3) and train.n_classes == 3
    image, label = val.raw(0)
    raw = scipy.io.loadmat(tmp_path / "imgs" / "a_1.mat")["img"]
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(float) - raw[..., :3] * 255).max() <= 1.0  # first 3 channels, scaled to 0..255
    assert label[0, ::2].tolist() == [0, 1, 2, 2, 0, 1, -1, 0, 0, 0]
    assert train[0]["image"].shape == (3, 224, 224) and val[0]["label"].shape == (320, 320)
    _, unlabelled = D.Potsdam3(tmp_path, "unlabelled_train").raw(0)
    assert (unlabelled == -1).all()


# ---------------------------------------------------------------------------------------------- five-crop


def test_five_crop_boxes_match_torchvision():
    canvas = torch.arange(37 * 52).view(1, 37, 52)
    ours = [canvas[:, t : t + h, x : x + w] for t, x, h, w in D.five_crop_boxes(37, 52, 0.5)]
    theirs = TF.five_crop(canvas, [18, 26])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_five_crop_round_trip_through_cropped_dataset(tmp_path, capsys):
    root = make_camvid(tmp_path / "camvid", n=2, h=40, w=60)
    source = D.CamVid(root, "train")
    assert prepare_main(["five-crop", "--dataset", "camvid", "--root", str(root), "--split", "train", "--quiet"]) == 0
    assert "wrote 10 crops" in capsys.readouterr().out
    cropped = D.CroppedDataset(root, D.CamVid, "train")
    assert len(cropped) == 10 and [s[0] for s in cropped.samples] == [str(k) for k in range(10)]
    assert cropped.classes == D.CAMVID_CLASSES and cropped.n_classes == 11
    boxes = D.five_crop_boxes(40, 60, 0.5)
    for k in range(10):
        image, label = source.raw(k // 5)
        t, x, h, w = boxes[k % 5]
        crop_image, crop_label = cropped.raw(k)
        assert crop_label.shape == (20, 30) and np.array_equal(crop_label, label[t : t + h, x : x + w])
        assert np.abs(crop_image.astype(int) - image[t : t + h, x : x + w]).mean() < 25  # JPEG, lossy
    stored = np.asarray(Image.open(D.cropped_dir(root, "camvid", "train") / "label" / "train" / "0.png"))
    assert np.array_equal(stored.astype(np.int64) - 1, cropped.raw(0)[1]) and stored.min() >= 0
    assert (cropped.raw(0)[1] == -1).any() and cropped[3]["image"].shape == (3, 224, 224)
    assert isinstance(D.get_dataset("camvid", "train", root=root, crop_type="five"), D.CroppedDataset)


# ---------------------------------------------------------------------------------------------- errors and registry


def test_missing_root_names_layout_and_download_command(tmp_path):
    with pytest.raises(D.DatasetError) as err:
        D.CocoStuff27(tmp_path / "nowhere", "train")
    msg = str(err.value)
    assert "does not exist" in msg and "images/{train2017,val2017}/<id>.jpg" in msg
    assert f"python -m hpnb download cocostuff27 --root {tmp_path / 'nowhere'}" in msg
    assert isinstance(err.value, HpnbError)
    (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(D.DatasetError, match=r"missing folder gtFine/train/[\s\S]*login"):
        D.Cityscapes27(tmp_path / "cs", "train")


def test_missing_crops_point_to_five_crop_command(tmp_path):
    root = make_camvid(tmp_path)
    with pytest.raises(D.DatasetError) as err:
        D.CroppedDataset(root, D.CamVid, "train")
    assert "cropped/camvid_five_crop_0.5/img/train/<k>.jpg" in str(err.value)
    assert f"python -m hpnb prepare five-crop --dataset camvid --root {root} --split train" in str(err.value)


def test_empty_split_and_unknown_split(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir(parents=True)
    with pytest.raises(D.DatasetError, match="split 'train' is empty"):
        D.CamVid(tmp_path, "train")
    with pytest.raises(D.DatasetError, match=r"unknown split 'bogus'.*'train', 'val', 'test'"):
        D.CamVid(tmp_path, "bogus")


def test_corrupt_files_are_named(tmp_path):
    root = make_camvid(tmp_path, n=3)
    bad = root / "train" / "images" / "img1.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = D.CamVid(root, "train")
    with pytest.raises(D.DatasetError, match="corrupt image file: .*img1.jpg"):
        ds[1]
    save_png(np.zeros((10, 10)), root / "train" / "labels" / "img2.png")  # wrong size
    with pytest.raises(D.DatasetError, match=r"img2.jpg: image is 40x60 but its label .*img2.png is 10x10"):
        ds.raw(2)
    Image.fromarray(rand_image(40, 60)).save(root / "train" / "labels" / "img0.png")  # an RGB "label"
    with pytest.raises(D.DatasetError, match="img0.png: expected a single-channel"):
        ds.raw(0)


def test_get_dataset_registry(tmp_path):
    root = make_camvid(tmp_path, split="val")
    ds = D.get_dataset("CamVid", "val", root=root)
    assert isinstance(ds, D.CamVid) and ds.res == 320 and ds[0]["image"].shape == (3, 320, 320)
    assert D.get_dataset("camvid", "val", root=root, res=392, transform="train")[0]["label"].shape == (392, 392)
    with pytest.raises(D.DatasetError) as err:
        D.get_dataset("imagenet", "train")
    for known in ("camvid", "cityscapes27", "cocostuff27", "potsdam3", "toy"):
        assert known in str(err.value)


def test_get_dataset_toy_is_lazy_and_ignores_path_transforms():
    pytest.importorskip("hpnb.toyworld")
    ds = D.get_dataset("toy", "train", res=32, transform="val")  # the CLI passes transform="val" for every dataset
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
