"""Your own images (`hpnb.data.folder`): a plain folder through the registry, its fixed split, skipped files, labels
when there are some, training without labels (checkpoint chosen by the held-out HP loss) and the clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpnb.config import HPConfig, get_config
from hpnb.data import DatasetError, FolderWarning, ImageFolder, get_dataset
from hpnb.data.toyworld import make_scene
from hpnb.utils import HpnbError


def make_folder(root: Path, n: int = 12, sizes=(64, 72, 80)) -> Path:
    """n toy scenes of mixed sizes, every other one in a nested folder, one grey JPEG."""
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image = make_scene(k, sizes[k % len(sizes)])[0][:, : sizes[k % len(sizes)] - 8 * (k % 2)]  # some not square
        where = root / "nested" / "deeper" if k % 2 else root
        Image.fromarray(image).save(where / f"scene_{k:02d}.png")
    Image.fromarray(make_scene(99, 64)[0][..., 0]).save(root / "grey.jpg")
    return root


def tiny_folder_config(root: Path, **kw) -> HPConfig:
    values = dict(
        data_root=str(root),
        n_clusters=3,
        res=56,
        val_res=56,
        dim=8,
        pool_size=4,
        batch_size=4,
        epochs=2,
        aug_views=1,
        val_every=1,
        checkpoint_every=100,
        crf=False,
    )
    return get_config("folder", **{**values, **kw})


def test_a_nested_folder_of_mixed_sizes_goes_through_the_registry_with_a_fixed_split(tmp_path, tmp_cache):
    root = make_folder(tmp_path / "photos")
    (root / "notes.txt").write_text("not an image")  # other files are not images: ignored, not counted
    with pytest.warns(FolderWarning, match="smaller than one crop"):  # 64-80 px < one 224 px crop: upscaled
        train = get_dataset("folder", "train", root=root, n_clusters=3)
    val = get_dataset("folder", "val", root=root, res=56, n_clusters=3)
    names = {s[0] for s in train.samples} | {s[0] for s in val.samples}
    assert len(names) == 13 and len(train) == 12 and len(val) == 1  # the held-out tenth, at least one
    assert "nested/deeper/scene_01.png" in names and "grey.jpg" in names
    assert not {s[0] for s in train.samples} & {s[0] for s in val.samples}
    item = val[0]
    assert item["image"].shape == (3, 56, 56) and item["label"].shape == (56, 56)
    assert (item["label"] == -1).all() and not val.labelled and val.classes == []
    # the split depends on the names only: a new image never moves the held-out ones (unless it is held out itself)
    Image.fromarray(make_scene(50, 64)[0]).save(root / "new.png")
    val2 = get_dataset("folder", "val", root=root, res=56)
    assert {s[0] for s in val.samples} <= {s[0] for s in val2.samples} | {"new.png"}


def test_unreadable_and_tiny_files_are_skipped_counted_and_named_once(tmp_path, tmp_cache):
    root = make_folder(tmp_path / "photos", n=6)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = (root / "scene_00.png").read_bytes()
    (root / "nested" / "cut.png").write_bytes(good[: len(good) // 2])  # a truncated PNG: header fine, data not
    Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(root / "sliver.png")  # under MIN_SIDE
    with pytest.warns(FolderWarning) as caught:
        ds = ImageFolder(root, "all", res=56)
    messages = [str(w.message) for w in caught]
    unreadable = [m for m in messages if "not readable" in m]
    assert len(unreadable) == 1 and "skipped 2 of 10 files" in unreadable[0]
    assert "broken.jpg" in unreadable[0] and "nested/cut.png" in unreadable[0]
    assert any("skipped 1 image smaller than 16 px" in m and "sliver.png" in m for m in messages)
    assert len(ds) == 7 and all(ds[i]["image"].shape == (3, 56, 56) for i in range(len(ds)))  # no crash later


def test_empty_folder_and_single_image_are_clear_errors(tmp_path, tmp_cache):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="(?s)found no image files under .*empty.*Put your photos there"):
        ImageFolder(tmp_path / "empty", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "missing", "train")
    Image.fromarray(make_scene(0, 64)[0]).save(tmp_path / "empty" / "one.png")
    with pytest.raises(DatasetError, match="holds 1 usable image.*at least 2"):
        ImageFolder(tmp_path / "empty", "train", res=56)


def test_a_labelled_folder_reads_its_class_list_and_label_pngs(tmp_path, tmp_cache):
    root = tmp_path / "labelled"
    for k in range(4):
        image, label = make_scene(k, 64)
        (root / "images" / "a").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / "a" / f"{k}.jpg")
        stored = label.astype(np.uint8)
        stored[:4] = 255  # ignore
        Image.fromarray(stored).save(root / "labels" / "a" / f"{k}.png")
    (root / "classes.txt").write_text("\n".join(["sky", "building", "tree", "grass", "road", "water", "car", "ball"]))
    ds = get_dataset("folder", "all", root=root, res=64, transform="val")
    assert ds.labelled and ds.classes[0] == "sky" and len(ds) == 4  # labels/ is not read as images
    item = ds[0]
    expected = torch.from_numpy(make_scene(0, 64)[1])
    expected[:4] = -1
    assert torch.equal(item["label"], expected)


def test_config_of_existing_presets_is_unchanged_and_n_clusters_is_saved_when_set(tmp_path):
    assert "n_clusters" not in get_config("toy").to_dict()  # existing run folders still match their config.json
    cfg = get_config("folder", data_root="x", n_clusters="5")
    assert cfg.n_clusters == 5 and cfg.to_dict()["n_clusters"] == 5
    cfg.save(tmp_path / "c.json")
    assert HPConfig.load(tmp_path / "c.json") == cfg


def test_training_without_labels_selects_the_step_with_the_lowest_held_out_loss(tmp_path, tmp_cache, random_backbone):
    from hpnb.runs import load_run, read_log
    from hpnb.train import HELD_OUT_DRAWS, Trainer, train

    root = make_folder(tmp_path / "photos")
    result = train(tiny_folder_config(root), out=tmp_path / "run", backbone=random_backbone, progress=False)
    losses = {row["step"]: row["val"]["held_out_loss"] for row in read_log(tmp_path / "run") if "val" in row}
    assert len(losses) == result.steps == 6  # 12 training images, batch 4, 2 epochs; validated every step
    assert result.best["step"] == min(losses, key=losses.get)
    assert "cluster" not in result.best and len(set(losses.values())) > 1  # the loss moves: it is not a constant
    cfg, model = load_run(tmp_path / "run")
    assert model.classes == ["cluster 0", "cluster 1", "cluster 2"] and cfg.n_clusters == 3
    # the criterion is a fixed set of draws of R: the same model gives the same held-out loss every time
    trainer = Trainer(tiny_folder_config(root), tmp_path / "again", backbone=random_backbone, progress=False)
    trainer.build_pools(task_agnostic=True)
    draws = trainer.held_out_losses()
    assert draws == trainer.held_out_losses() and len(draws) == HELD_OUT_DRAWS
    assert len(set(draws)) > 1  # the draws differ: their spread is what the log's held_out_loss_std reports
    assert trainer.held_out_loss() == pytest.approx(np.mean(draws))
    val = trainer.validate()
    assert val["held_out_loss"] == round(np.mean(draws), 4) and val["held_out_loss_std"] == round(
        np.std(draws, ddof=1), 4
    )
    assert val["held_out_draws"] == [round(d, 4) for d in draws]  # logged, for the paired view of hpnb.viz


def test_the_held_out_pools_are_read_once_and_follow_the_momentum_head(tmp_path, tmp_cache, random_backbone):
    """Each draw's pool patches come from the frozen backbone, so they are read on the first validation only; Q_sp
    goes through the current momentum head, so a changed head changes the held-out loss."""
    from hpnb.train import HELD_OUT_DRAWS, Trainer

    trainer = Trainer(tiny_folder_config(make_folder(tmp_path / "photos")), tmp_path / "run", backbone=random_backbone)
    reads, pool_batches = [], trainer.source.pool_batches
    trainer.source.pool_batches = lambda *a, **k: reads.append(1) or pool_batches(*a, **k)
    first = trainer.held_out_losses()
    assert trainer.held_out_losses() == first and len(reads) == HELD_OUT_DRAWS  # read once, not per validation
    with torch.no_grad():
        for p in trainer.model.heads.ema.parameters():
            p.mul_(-1.0)
    assert trainer.held_out_losses() != first and len(reads) == HELD_OUT_DRAWS


def test_bad_sizes_and_missing_n_clusters_are_clear_errors(tmp_path, tmp_cache, random_backbone):
    from hpnb.train import train

    root = make_folder(tmp_path / "three", n=3)  # 3 scenes + the grey JPEG: 3 train, 1 held out
    (root / "grey.jpg").unlink()
    with pytest.raises(HpnbError, match="have no labels.*n_clusters=8"):
        train(tiny_folder_config(root, n_clusters=None), out=tmp_path / "r", backbone=random_backbone, progress=False)
    with pytest.raises(HpnbError) as err:
        train(
            tiny_folder_config(root, pool_size=128, batch_size=8),
            out=tmp_path / "r",
            backbone=random_backbone,
            progress=False,
        )
    msg = str(err.value)
    assert "has 2 images" in msg and "fewer than batch_size=8" in msg and "pool_size M=128" in msg
    assert "batch_size=2 pool_size=2" in msg  # what to run next
