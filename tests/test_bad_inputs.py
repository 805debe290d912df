"""Messy folders and odd photos: your files are never written to, every input gets outputs of its own, pixels are
read as a viewer shows them (the same in training and prediction), the held-out split never moves, and every bad
input is a clear message (what was expected, what was found, what to do), before the model loads where it can be."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hpnb
from hpnb.data import DatasetError, FolderWarning, ImageFolder, get_dataset
from hpnb.data.toyworld import make_scene
from hpnb.predict import predict_folder
from hpnb.utils import HpnbError

ROOT = Path(__file__).resolve().parents[1]


class FakeSegmenter:
    """Stands in for a loaded run where only the files matter: two clusters, bright pixels = cluster 1."""

    run = None
    names = ["dark", "bright"]
    colours = np.array([[0, 0, 255], [255, 0, 0]], np.uint8)

    def __call__(self, image):
        return (hpnb.predict._as_rgb(image).mean(axis=2) > 127).astype(np.int64)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the checks under test must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(hpnb.predict, "Segmenter", refuse)


def scene(path: Path, k: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_scene(k, size)[0]).save(path)
    return path


# -- 1. user files are never written to ------------------------------------------------------------------------


def test_an_out_that_is_the_input_folder_is_refused_before_the_model_loads(tmp_path, tmp_cache, no_model, capsys):
    from hpnb.__main__ import main

    photo = scene(tmp_path / "photos" / "astronaut.png")
    before = photo.read_bytes()
    assert main(["predict", "run", str(photo), "--out", str(tmp_path / "photos"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "is the folder of the input image astronaut.png" in err and "photos_predictions" in err
    with pytest.raises(HpnbError, match="is the input folder: predictions never go among the photos"):
        predict_folder("run", tmp_path / "photos", tmp_path / "photos" / ".." / "photos", progress=False)
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(HpnbError, match="is a file; expected a folder"):
        predict_folder("run", tmp_path / "photos", tmp_path / "file.txt", progress=False)
    assert photo.read_bytes() == before and sorted(os.listdir(tmp_path / "photos")) == ["astronaut.png"]


def test_an_existing_file_in_out_is_never_replaced_but_earlier_outputs_are(tmp_path, tmp_cache):
    src, out = tmp_path / "photos", tmp_path / "out"
    scene(src / "a.jpg")
    out.mkdir()
    (out / "a.png").write_bytes(b"my own a.png")
    (out / "legend.png").write_bytes(b"my own legend")
    for _ in range(2):  # a second call replaces what the first wrote, and only that
        result = predict_folder(None, src, out, progress=False, segmenter=FakeSegmenter())
        assert result.outputs == {"a.jpg": ["a-1.png", "a-1_overlay.jpg"]} and result.legend == out / "legend-1.png"
    assert (out / "a.png").read_bytes() == b"my own a.png" and (out / "legend.png").read_bytes() == b"my own legend"
    assert sorted(os.listdir(out)) == sorted(
        ["a.png", "legend.png", "a-1.png", "a-1_overlay.jpg", "legend-1.png", "legend-1.json", "predictions.json"]
    )
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["images"] == {"a.jpg": ["a-1.png", "a-1_overlay.jpg"]}


# -- 2. one output per input -----------------------------------------------------------------------------------


def test_inputs_that_share_a_stem_get_outputs_of_their_own_and_nested_paths_are_kept(tmp_path, tmp_cache):
    src = tmp_path / "photos"
    for k, name in enumerate(["street.tif", "street.webp", "photo.jpg", "photo.png", "nested/street.tif", "solo.jpg"]):
        scene(src / name, k)
    result = predict_folder(None, src, tmp_path / "out", progress=False, segmenter=FakeSegmenter())
    assert len(result.written) == 6 and "segmented 6 images" in str(result)
    assert result.outputs == {
        "nested/street.tif": ["nested/street.png", "nested/street_overlay.jpg"],
        "photo.jpg": ["photo_jpg.png", "photo_jpg_overlay.jpg"],
        "photo.png": ["photo_png.png", "photo_png_overlay.jpg"],
        "solo.jpg": ["solo.png", "solo_overlay.jpg"],
        "street.tif": ["street_tif.png", "street_tif_overlay.jpg"],
        "street.webp": ["street_webp.png", "street_webp_overlay.jpg"],
    }
    written = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == {n for pair in result.outputs.values() for n in pair} | {
        "legend.png",
        "legend.json",
        "predictions.json",
    }
    for rel, (labels, _) in result.outputs.items():  # each output is its own input's
        assert Image.open(tmp_path / "out" / labels).size == Image.open(src / rel).size


def test_planned_names_never_collide_even_when_a_suffix_makes_a_stem():
    from hpnb.predict import plan_outputs

    plan, legend, manifest = plan_outputs(["x.tif", "x.png", "x_tif.png", "legend.png", "A.jpg", "a.PNG"], Path("/nx"))
    names = [n.casefold() for pair in plan.values() for n in pair] + [n.casefold() for n in [*legend, manifest]]
    assert len(names) == len(set(names)) and plan["legend.png"] == ["legend-1.png", "legend-1_overlay.jpg"]


# -- 3. pixels as a person sees them, one reader -----------------------------------------------------------------


def test_sixteen_bit_exif_and_float_images_are_read_as_a_viewer_shows_them(tmp_path, tmp_cache):
    from hpnb.data.base import read_photo

    Image.fromarray(np.full((32, 48), 40000, np.uint16)).save(tmp_path / "grey16.png")  # mode I;16
    assert read_photo(tmp_path / "grey16.png")[0, 0].tolist() == [156, 156, 156]  # 40000 / 257, not white
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° to show it
    Image.fromarray(make_scene(1, 64)[0][:, :40]).save(tmp_path / "turned.jpg", exif=exif)
    assert read_photo(tmp_path / "turned.jpg").shape == (40, 64, 3)
    rgb = make_scene(2, 32)[0]
    assert np.array_equal(read_photo(rgb / 255.0), rgb)  # floats in [0, 1], as scikit-image returns them
    assert np.array_equal(read_photo(rgb.astype(np.uint16) * 257), rgb)  # 16-bit array
    assert read_photo(rgb[..., 0]).shape == (32, 32, 3)
    with pytest.raises(HpnbError, match=r"expected floats in \[0, 1\].*found float64 values in \[0, 255\]"):
        read_photo(np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3))
    with pytest.raises(HpnbError, match=r"found shape \(3, 32, 32\): channels first\? Pass image.transpose"):
        read_photo(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(HpnbError, match=r"found int64 values in \[-1, 300\]"):
        read_photo(np.array([[-1, 300]] * 20))
    # the folder dataset (training) and prediction read the same pixels
    for name in ("grey16.png", "turned.jpg"):
        scene(tmp_path / "folder" / f"x{name}", 3)
        (tmp_path / "folder" / name).write_bytes((tmp_path / name).read_bytes())
    ds = ImageFolder(tmp_path / "folder", "all", res=32)
    for i, (name, path, _) in enumerate(ds.samples):
        assert np.array_equal(ds.load_image(i), hpnb.predict._as_rgb(path)), name


# -- 4. one resampling for training and prediction ------------------------------------------------------------


def test_the_registered_datasets_keep_nearest_and_a_folder_resamples_with_bilinear(tmp_path, tmp_cache):
    from hpnb.data.transforms import RESAMPLING, resampling, train_transform, val_transform

    assert RESAMPLING == {"folder": "bilinear"}
    assert [resampling(d) for d in ("toy", "camvid", "cocostuff27", "folder")] == ["nearest"] * 3 + ["bilinear"]
    assert train_transform(224).image_interpolation == val_transform(320).image_interpolation == "nearest"
    root = tmp_path / "photos"
    for k in range(3):
        scene(root / f"{k}.png", k)
    for split in ("train", "val", "all"):
        assert get_dataset("folder", split, root=root, res=32).transform.image_interpolation == "bilinear"


# -- 5. the held-out split never moves ---------------------------------------------------------------------------


def test_adding_names_one_at_a_time_never_moves_an_existing_name_between_the_parts():
    from hpnb.data.folder import HASH_BITS, VAL_SHARE, held_out, name_hash

    names = [f"photos/img_{k:04d}.jpg" for k in range(1000)]
    threshold = VAL_SHARE * 2**HASH_BITS
    previous, ruled = None, []  # the parts one name ago, when the threshold alone decided them
    for n in range(2, len(names) + 1):
        now = names[:n]
        val = held_out(now)
        below = {m for m in now if name_hash(m) < threshold}
        assert val and len(val) < n  # both parts hold an image
        rule = bool(below) and len(below) < n
        ruled.append(rule)
        if rule:  # a fixed threshold per name: adding one never moves another
            assert val == below
            if previous is not None:
                assert all(previous[m] == (m in val) for m in previous), f"a name changed sides at {n} names"
        previous = {m: m in val for m in now} if rule else None
    assert ruled.index(True) < 30 and all(ruled[ruled.index(True) :])  # the fallback only in a small folder
    assert 70 <= len(held_out(names)) <= 130  # about a tenth
    # a small folder with no name under the threshold holds out its one smallest hash
    small = [m for m in names if name_hash(m) >= VAL_SHARE * 2**HASH_BITS][:5]
    assert held_out(small) == {min(small, key=name_hash)}


# -- 6. malformed names.json, an output folder that cannot be written --------------------------------------------


@pytest.mark.parametrize(
    "text, found",
    [
        ('{"0": "sky",}', "is not valid JSON"),
        ("7", "holds a JSON int"),
        ('{"sky": "blue"}', "'sky' is not a cluster id"),
        ('{"0": {"name": "sky"}}', "the name of cluster 0 is"),
    ],
)
def test_a_malformed_names_json_names_the_file_what_was_expected_and_the_fix(tmp_path, text, found):
    from hpnb.predict import cluster_names, name_clusters

    (tmp_path / "names.json").write_text(text)
    for call in (lambda: cluster_names(tmp_path, ["c0", "c1"]), lambda: name_clusters(tmp_path, {1: "road"})):
        with pytest.raises(HpnbError) as err:
            call()
        msg = str(err.value)
        assert str(tmp_path / "names.json") in msg and found in msg
        assert 'expected {"0": "sky", "3": "road"}' in msg and "Fix or delete" in msg and "name_clusters" in msg
    (tmp_path / "names.json").write_text('["sky", null, "road"]')  # a list of names, null = unnamed
    assert cluster_names(tmp_path, ["c0", "c1", "c2"]) == ["sky", "c1", "road"]


def test_an_output_folder_that_cannot_be_written_fails_before_the_model_loads(
    tmp_path, tmp_cache, no_model, monkeypatch
):
    scene(tmp_path / "photos" / "a.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hpnb.predict.tempfile, "mkstemp", denied)  # as a read-only folder (tests may run as root)
    with pytest.raises(HpnbError, match="cannot write to the output folder .*out \\(Permission denied\\); expected a"):
        predict_folder("run", tmp_path / "photos", tmp_path / "out", progress=False)


# -- 7. n_clusters from 2 to 255, checked before any work ---------------------------------------------------------


def test_n_clusters_outside_2_to_255_is_refused_before_the_folder_is_scanned(tmp_path, tmp_cache, monkeypatch):
    from hpnb.config import get_config
    from hpnb.train import run_classes

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned before checking n_clusters")

    monkeypatch.setattr("hpnb.data.folder.scan", no_scan)
    with pytest.raises(HpnbError, match="n_clusters=1000 is more than 255: a label PNG holds one byte"):
        get_dataset("folder", "train", root=tmp_path, n_clusters=1000)
    for n in (1, 0, -3):
        with pytest.raises(HpnbError, match=f"n_clusters={n}: HP needs at least 2 clusters.*expected 2 to 255"):
            get_dataset("folder", "train", root=tmp_path, n_clusters=n)
    unlabelled = type("Unlabelled", (), {"classes": [], "root": tmp_path})()
    with pytest.raises(HpnbError, match="n_clusters=1: HP needs at least 2"):
        run_classes(get_config("folder", n_clusters=1), unlabelled)
    with pytest.raises(HpnbError, match="n_clusters is not set. Add e.g. n_clusters=8"):
        run_classes(get_config("folder"), unlabelled)
    assert run_classes(get_config("folder", n_clusters=255), unlabelled)[-1] == "cluster 254"


# -- 8. dangling links, images over PIL's limit, very large images --------------------------------------------------


def test_a_dangling_link_and_an_image_over_pils_limit_are_skipped_and_named(tmp_path, tmp_cache, monkeypatch):
    root = tmp_path / "photos"
    for k in range(3):
        scene(root / f"{k}.png", k, 64)
    scene(root / "huge.png", 9, 96)
    (root / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 96 x 96 = 9216 pixels > 2 x 3000: PIL refuses it
    for read in (
        lambda: ImageFolder(root, "all", res=32),
        lambda: predict_folder(None, root, tmp_path / "out", progress=False, segmenter=FakeSegmenter()),
    ):
        with pytest.warns(FolderWarning) as caught:
            read()
        (msg,) = [str(w.message) for w in caught if "not readable" in str(w.message)]
        assert "skipped 2 of 5 files" in msg and "gone.jpg (a link to a missing file)" in msg
        assert "huge.png (over PIL's limit of 6000 pixels)" in msg
    assert sorted(json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]) == [
        "0.png",
        "1.png",
        "2.png",
    ]


def test_a_very_large_image_is_read_at_a_reduced_size_in_training_and_prediction(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.setattr("hpnb.data.base.MAX_PIXELS", 2000)  # as 16 MP for a 64 x 64 photo
    root = tmp_path / "photos"
    scene(root / "big.png", 1, 64)  # 4096 pixels: read at 1/2
    scene(root / "big.jpg", 2, 64)
    with pytest.warns(FolderWarning, match="2 images are over 0.002 megapixels .*big.jpg \\(64x64, read at 1/2\\)"):
        ds = ImageFolder(root, "all", res=16)
    with pytest.warns(FolderWarning, match="over 0.002 megapixels"):
        result = predict_folder(None, root, tmp_path / "out", progress=False, segmenter=FakeSegmenter())
    for i, (name, _, _) in enumerate(ds.samples):
        assert ds.load_image(i).shape == (32, 32, 3)
        assert Image.open(tmp_path / "out" / result.outputs[name][0]).size == (32, 32)


# -- 9. the real reason, a non-zero exit when nothing was produced, tiny images alike ------------------------------


def test_a_data_root_that_is_a_file_says_so(tmp_path, tmp_cache):
    photo = scene(tmp_path / "photos" / "a.png")
    with pytest.raises(DatasetError, match=f"(?s)data_root {photo} is a file; expected a folder.*data_root="):
        ImageFolder(photo, "train")


def test_predicting_only_unreadable_files_exits_non_zero_and_writes_nothing(tmp_path, tmp_cache, no_model, capsys):
    from hpnb.__main__ import main

    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(src / "tiny.png")
    assert main(["predict", "run", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "nothing to segment: of the 2 image files" in err and "1 not readable as images (a.jpg)" in err
    assert "1 under 16 px on a side (tiny.png)" in err and not (tmp_path / "out").exists()


def test_a_tiny_image_is_skipped_with_the_same_warning_in_training_and_prediction(tmp_path, tmp_cache):
    root = tmp_path / "photos"
    for k in range(3):
        scene(root / f"{k}.png", k)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "tiny.png")
    messages = []
    for read in (
        lambda: ImageFolder(root, "all", res=32),
        lambda: predict_folder(None, root, tmp_path / "out", progress=False, segmenter=FakeSegmenter()),
    ):
        with pytest.warns(FolderWarning) as caught:
            read()
        messages.append([str(w.message) for w in caught if "px on a side" in str(w.message)])
    assert messages[0] == messages[1] == ["skipped 1 image smaller than 16 px on a side: tiny.png"]
    with pytest.raises(HpnbError, match="is 10x10 pixels .*smaller than 16 px on a side: too small to segment"):
        hpnb.predict._as_rgb(np.zeros((10, 10, 3), np.uint8))


def test_an_existing_npy_file_is_never_replaced(tmp_path, tmp_cache, no_model):
    from hpnb.predict import predict_file

    photo = scene(tmp_path / "a.png")
    (tmp_path / "a.npy").write_bytes(b"mine")
    with pytest.raises(HpnbError, match="a.npy exists; hpnb never replaces a file"):
        predict_file("run", photo, tmp_path / "a.npy")
    with pytest.raises(DatasetError, match="is not a readable image"):
        predict_file("run", tmp_path / "a.npy", tmp_path / "b.npy")


# -- 10. notebook 07 saves the example's names only for the example folder ------------------------------------------


def test_notebook_07_saves_the_example_names_only_for_the_example_folder():
    """The cell that decides, run as it is in the notebook with FOLDER set and unset."""
    (path,) = (ROOT / "notebooks").glob("07_*.ipynb")
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    (cell,) = [c for c in cells if "EXAMPLE_NAMES" in c and "name_clusters" in c]
    saved: list[dict] = []
    stub = type("Stub", (), {})()
    stub.predict = type("P", (), {})()
    stub.predict.name_clusters = lambda run, names: saved.append(dict(names))
    stub.predict.cluster_names = lambda run: []
    for folder, expected in ((None, "example"), ("/my/photos", None)):
        saved.clear()
        env = {"hpnb": stub, "FOLDER": folder, "run": type("R", (), {"out": Path("/runs/x")})(), "print": print}
        with warnings.catch_warnings():
            exec(compile(cell, str(path), "exec"), env)  # the notebook's own cell
        if expected == "example":
            assert saved == [env["EXAMPLE_NAMES"]] and saved[0]
        else:
            assert saved == [] or saved == [{}], f"FOLDER={folder!r} wrote the example folder's names: {saved}"
