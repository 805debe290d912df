"""Tests of the toy world (hpnb.data.toyworld): determinism, labels, the Dataset API, offline textures, its figures
(hpnb.viz) and how hard it is (the colour-statistics k-means of hpnb.baseline stays clearly below 90 %)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpnb import baseline, viz
from hpnb.data import toyworld as tw
from hpnb.metrics import IGNORE
from hpnb.utils import HpnbError


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """The first 50 train scenes at 224 px."""
    return [tw.make_scene(i) for i in range(50)]


def test_classes_and_palette_agree():
    assert len(tw.CLASSES) == tw.N_CLASSES >= 6
    assert len(tw.PALETTE) == tw.N_CLASSES and len(set(tw.PALETTE)) == tw.N_CLASSES
    assert sorted(tw.STUFF + tw.THINGS) == sorted(tw.CLASSES)


def test_make_scene_is_deterministic_and_seeded():
    img_a, lab_a = tw.make_scene(3, 224, seed=0)
    img_b, lab_b = tw.make_scene(3, 224, seed=0)
    assert np.array_equal(img_a, img_b) and np.array_equal(lab_a, lab_b)
    img_c, _ = tw.make_scene(3, 224, seed=1)
    img_d, _ = tw.make_scene(4, 224, seed=0)
    assert not np.array_equal(img_a, img_c) and not np.array_equal(img_a, img_d)


def test_make_scene_shapes_and_label_range(scenes):
    for img, lab in scenes:
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8
        assert lab.shape == (224, 224) and lab.dtype == np.int64
        assert lab.min() >= 0 and lab.max() < tw.N_CLASSES
    img, lab = tw.make_scene(0, size=112)
    assert img.shape == (112, 112, 3) and lab.shape == (112, 112)


def test_every_class_appears_and_scenes_are_rich(scenes):
    seen = set()
    for _, lab in scenes:
        present = np.unique(lab)
        assert len(present) >= 3
        seen.update(present.tolist())
    assert seen == set(range(tw.N_CLASSES))


def test_colours_vary_within_a_class(scenes):
    """Buildings change colour from scene to scene (colour alone must not identify a class)."""
    means = np.array([img[lab == tw.BUILDING].mean(0) for img, lab in scenes if (lab == tw.BUILDING).sum() > 500])
    assert len(means) >= 10 and means.std(0).max() > 20


def test_bundled_textures_load_without_network(monkeypatch):
    import skimage.data

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("brick", "grass", "gravel", "moon"):
        assert (Path(skimage.data.__file__).parent / f"{name}.png").is_file()
    raw = tw.load_skimage_textures()
    assert set(raw) == {"brick", "grass", "gravel", "moon"}
    assert all(t.ndim == 2 and t.shape[0] >= 256 and t.std() > 5 for t in raw.values())
    tw.textures.cache_clear()
    tex = tw.textures()
    assert all(abs(float(t.mean())) < 1e-3 and abs(float(t.std()) - 1) < 1e-2 for t in tex.values())


def test_dataset_items():
    ds = tw.ToyWorld("val", n=3, res=112)
    assert len(ds) == 3 and ds.split == "val" and ds.root is None
    assert ds.classes == tw.CLASSES and ds.n_classes == tw.N_CLASSES
    item = ds[2]
    assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.float32
    assert item["label"].shape == (112, 112) and item["label"].dtype == torch.int64
    assert item["name"] == "toy_val_0002" and item["index"] == 2
    img, lab = ds.raw(2)
    assert np.array_equal(lab, item["label"].numpy())
    from hpnb.data import denormalize

    back = denormalize(item["image"]) * 255
    assert torch.allclose(back, torch.from_numpy(img).permute(2, 0, 1).float(), atol=1e-3)


def test_default_sizes_and_split_disjointness():
    assert [len(tw.ToyWorld(s)) for s in ("train", "val", "test")] == [300, 100, 100]
    train, val, test = (tw.ToyWorld(s, n=2, res=56).raw(0)[0] for s in ("train", "val", "test"))
    assert not np.array_equal(train, val) and not np.array_equal(val, test) and not np.array_equal(train, test)
    starts = sorted(offset for offset, _ in tw.SPLITS.values())
    assert all(b - a >= tw.SPLIT_SIZE for a, b in zip(starts, starts[1:], strict=False))


def test_transform_replaces_normalisation():
    def transform(pil, label):
        return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float(), torch.from_numpy(label[::2, ::2].copy())

    item = tw.ToyWorld("test", n=1, res=56, transform=transform)[0]
    assert item["image"].shape == (3, 56, 56) and item["image"].max() > 1
    assert item["label"].shape == (28, 28) and item["label"].dtype == torch.int64


def test_clear_errors():
    with pytest.raises(HpnbError, match="split must be one of"):
        tw.ToyWorld("validation")
    with pytest.raises(HpnbError, match="n=0"):
        tw.ToyWorld("train", n=0)
    with pytest.raises(IndexError):
        tw.ToyWorld("train", n=2).raw(5)
    with pytest.raises(HpnbError, match="size >= 16"):
        tw.make_scene(0, size=8)
    with pytest.raises(HpnbError, match="non-negative"):
        tw.make_scene(-1)
    with pytest.raises(HpnbError, match="labels in"):
        viz.colorize_toyworld(np.array([[0, 99]]))


def test_colorize_uses_palette_and_black_for_ignore():
    rgb = viz.colorize_toyworld(np.array([[0, tw.N_CLASSES - 1, IGNORE]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert tuple(rgb[0, 0]) == tw.PALETTE[0] and tuple(rgb[0, 1]) == tw.PALETTE[-1] and tuple(rgb[0, 2]) == (0, 0, 0)


def test_preview_returns_a_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = viz.preview_toyworld(n=2, res=56)
    assert len(fig.axes) == 4 and fig.legends
    plt.close(fig)


def test_generation_time_is_reported():
    start = time.perf_counter()
    for i in range(20):
        tw.make_scene(i)
    per_scene = (time.perf_counter() - start) / 20
    print(f"\nToyWorld: {1000 * per_scene:.1f} ms per 224 px scene (20 scenes)")


def test_patch_histograms_count_pixels():
    _, lab = tw.make_scene(0)
    hist = tw.patch_histograms(lab, 14)
    assert hist.shape == (256, tw.N_CLASSES) and (hist.sum(1) == 196).all()
    assert np.array_equal(hist.sum(0), np.bincount(lab.ravel(), minlength=tw.N_CLASSES))


def test_colour_statistics_do_not_solve_the_toy_world():
    """Every class draws its colour and texture from one shared pool: k-means on per-patch colour and edge statistics
    stays near the majority class, and far below 90 % (the toy world's difficulty check)."""
    n = 60
    labels = [tw.ToyWorld("val", n=n).raw(i)[1] for i in range(n)]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=tw.N_CLASSES)
    majority = 100 * counts.max() / counts.sum()
    result = baseline.toyworld_colour_kmeans(n_scenes=n, split="val")
    print(f"\ncolour k-means on {n} val scenes: {result}; majority class {majority:.1f} %")
    assert result.acc < majority + 5 and result.acc < 90


@pytest.mark.slow
def test_a_vit_separates_what_colour_statistics_cannot(tmp_cache):
    """Shape and context tell the classes apart: k-means on the offline DINOv2-S/14 patch features beats k-means on
    colour/edge statistics by a wide margin on the same scenes."""
    from hpnb.backbones import load_backbone
    from hpnb.features import extract_features

    backbone = load_backbone()
    train, val = (extract_features(backbone, tw.ToyWorld(split, n=24), progress=False) for split in ("train", "val"))
    vit = baseline.kmeans_baseline(train, val, tw.N_CLASSES).scores
    colour = baseline.toyworld_colour_kmeans(n_scenes=24, split="val")
    print(f"\nk-means on 24 val scenes: ViT {vit}; colour/edge statistics {colour}")
    assert vit.acc > colour.acc + 8 and vit.miou > colour.miou + 4
