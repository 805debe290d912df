"""Segmenting your own photos (`hpnb.predict`): any size, whole folders (palette PNGs, overlays, legend), names from
names.json, the command line, and the qualitative report of a run without labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_folder import make_folder, tiny_folder_config

import hpnb
from hpnb.data import FolderWarning
from hpnb.data.toyworld import make_scene


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, random_backbone):
    """A tiny run trained without labels on a folder of toy scenes (random-weight backbone, 6 steps)."""
    from hpnb.train import train

    tmp = tmp_path_factory.mktemp("folder_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPNB_CACHE", str(tmp / "cache"))
        root = make_folder(tmp / "photos")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FolderWarning)
            train(tiny_folder_config(root), out=tmp / "run", backbone=random_backbone, progress=False)
    return tmp / "run", root


@pytest.fixture
def patched(folder_run, random_backbone, monkeypatch, tmp_path):
    """The run's cache and backbone for code that loads them itself (the CLI, the report)."""
    monkeypatch.setenv("HPNB_CACHE", str(folder_run[0].parent / "cache"))
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: random_backbone)
    return folder_run


def test_overlay_blends_colours_and_keeps_ignored_pixels():
    from hpnb.viz import overlay

    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[0, 1, -1], [1, 0, 0]])
    colours = np.array([[200, 0, 0], [0, 0, 255]], np.uint8)
    out = overlay(image, labels, colours, alpha=0.25)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [125, 75, 75] and out[0, 1].tolist() == [75, 75, 139]  # 0.75·100 + 0.25·255 = 138.75
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore: the photo


def test_closest_patches_ranks_by_cosine_not_by_length():
    from hpnb.report import closest_patches

    codes = torch.tensor([[10.0, 10.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    assert closest_patches(codes, torch.tensor([2.0, 0.0]), 3).tolist() == [1, 2, 0]


def test_any_size_image_and_the_callable_module(patched):
    run, _ = patched
    image = (np.random.default_rng(0).random((37, 90, 3)) * 255).astype(np.uint8)  # smaller than a crop, wide
    labels = hpnb.predict(image, run, crf=False)
    assert labels.shape == (37, 90) and labels.dtype == np.int64 and 0 <= labels.min() and labels.max() < 3
    assert np.array_equal(hpnb.evaluate.predict(image, run, crf=False), labels)  # the former name
    grey = hpnb.predict.predict(image[..., 0], run, crf=True)  # a grey image; the CRF when installed
    assert grey.shape == (37, 90)
    with pytest.raises(hpnb.HpnbError, match="trained without labels.*head='cluster'"):
        hpnb.predict.Segmenter(run, head="linear")


def test_predict_folder_writes_palette_pngs_overlays_and_a_named_legend(patched, tmp_path, capsys):
    from hpnb.__main__ import main
    from hpnb.predict import cluster_names, name_clusters

    run, root = patched
    (root / "nested" / "broken.png").write_bytes(b"\x89PNG broken")
    name_clusters(run, {1: "sky"})
    assert cluster_names(run) == ["cluster 0", "sky", "cluster 2"]
    with pytest.warns(FolderWarning, match="skipped 1 of 14 files .*nested/broken.png"):
        result = hpnb.predict.predict_folder(run, root, tmp_path / "out", crf=False, progress=False)
    assert len(result.written) == 13 and result.skipped == ["nested/broken.png"]
    png = Image.open(tmp_path / "out" / "nested" / "deeper" / "scene_01.png")
    assert png.mode == "P" and png.size == Image.open(root / "nested" / "deeper" / "scene_01.png").size
    seg = hpnb.predict.Segmenter(run, crf=False)
    assert np.array_equal(np.asarray(png), seg(root / "nested" / "deeper" / "scene_01.png"))
    assert png.getpalette()[3:6] == seg.colours[1].tolist()
    assert (tmp_path / "out" / "grey_overlay.jpg").is_file() and (tmp_path / "out" / "legend.png").is_file()
    legend = json.loads((tmp_path / "out" / "legend.json").read_text())
    assert [e["name"] for e in legend] == ["cluster 0", "sky", "cluster 2"]
    # the command line: a folder, and one image to a NumPy file
    with pytest.warns(FolderWarning):
        assert main(["predict", str(run), str(root), "--out", str(tmp_path / "cli"), "--no-crf", "--quiet"]) == 0
    assert "segmented 13 images, skipped 1 unreadable" in capsys.readouterr().out
    one = root / "grey.jpg"
    assert main(["predict", str(run), str(one), "--out", str(tmp_path / "g.npy"), "--no-crf"]) == 0
    assert np.load(tmp_path / "g.npy").shape == (64, 64)


def test_the_report_of_a_run_without_labels_shows_overlays_and_cluster_strips(patched, capsys):
    from hpnb.__main__ import main

    run, _ = patched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FolderWarning)
        assert main(["evaluate", str(run), "--no-crf"]) == 0
    out = capsys.readouterr().out
    assert "cluster  1 sky" in out or "cluster  1 cluster 1" in out
    summary = json.loads((run / "eval_val.json").read_text())
    shares = [c["share"] for c in summary["clusters"]]
    assert len(shares) == 3 and abs(sum(shares) - 1) < 1e-3
    assert Image.open(run / "clusters.png").size[1] >= 250 and (run / "overlay_val.png").is_file()
    assert "lowest HP loss" in (run / "report_val.md").read_text()


def test_prediction_feeds_the_backbone_what_training_fed_it(patched, random_backbone, monkeypatch, tmp_path):
    """One resampling per run (`hpnb.data.transforms.resampling`): a 448 px photo shrunk 8x to the run's 56 px reaches
    the backbone as the same tensor in the folder dataset (training, validation) and in prediction."""
    from hpnb.data.transforms import resampling

    run, _ = patched
    photo = np.asarray(Image.fromarray(make_scene(7, 112)[0]).resize((448, 448), Image.NEAREST))  # sharp edges
    root = tmp_path / "two"
    root.mkdir()
    Image.fromarray(photo).save(root / "photo.png")
    Image.fromarray(make_scene(8, 64)[0]).save(root / "other.png")
    dataset = hpnb.data.get_dataset("folder", "all", root=root, res=56, transform="val")
    trained = dataset[[name for name, _, _ in dataset.samples].index("photo.png")]["image"]
    seen = []
    forward = random_backbone.forward
    monkeypatch.setattr(random_backbone, "forward", lambda x, **kw: seen.append(x[0].clone()) or forward(x, **kw))
    seg = hpnb.predict.Segmenter(run, crf=False, backbone=random_backbone)
    seg(root / "photo.png")
    assert resampling(seg.cfg.dataset) == dataset.transform.image_interpolation == "bilinear"
    assert seen[0].shape == trained.shape == (3, 56, 56) and torch.equal(seen[0], trained)


def test_float_and_sixteen_bit_images_segment_like_their_eight_bit_twin(patched, tmp_path):
    run, _ = patched
    seg = hpnb.predict.Segmenter(run, crf=False)
    photo = make_scene(5, 64)[0]
    labels = seg(photo)
    assert np.array_equal(hpnb.predict.predict(photo / 255.0, run, crf=False), labels)  # what skimage returns
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # was read all white
    assert np.array_equal(seg(tmp_path / "grey16.png"), seg(photo[..., 0]))


def test_closest_patches_takes_at_most_per_image_and_goes_on_down_the_ranking():
    from hpnb.report import closest_patches

    codes = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, 0.2], [0.5, 0.5], [0.0, 1.0], [0.9, 0.3]])
    image_of = torch.tensor([0, 0, 0, 1, 1, 2])  # image 0 holds the three nearest patches
    centroid = torch.tensor([1.0, 0.0])
    assert closest_patches(codes, centroid, 3).tolist() == [0, 1, 2]  # no cap: one image fills the strip
    assert closest_patches(codes, centroid, 3, image_of, per_image=1).tolist() == [0, 5, 3]
    assert closest_patches(codes, centroid, 4, image_of, per_image=2).tolist() == [0, 1, 5, 3]
    assert closest_patches(codes, centroid, 9, image_of, per_image=1).tolist() == [0, 5, 3]  # fewer are there
