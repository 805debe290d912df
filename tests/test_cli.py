"""The command line and the demo job (small sizes)."""
import pytest
import torch

from hpnb.__main__ import main


def test_demo_trains_evaluates_and_reports_the_computed_numbers(tmp_path, tmp_cache, monkeypatch):
    from hpnb.backbones import load_backbone
    from hpnb.demo import run_demo

    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14_imgfocus", weights="random")
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    summary = run_demo(out=tmp_path / "demo", progress=False, n_train=12, n_val=4, res=56, val_res=56, dim=8,
                       pool_size=6, batch_size=4, epochs=1, aug_views=1, val_every=3, crf_workers=1)
    report = (tmp_path / "demo" / "report.md").read_text()
    for name in ("HP", "k-means"):
        for head in ("cluster", "cluster+crf", "linear", "linear+crf"):
            s = summary["results"][name][head]
            assert 0 <= s["acc"] <= 100
        row = summary["results"][name]
        assert f"| {name} | {row['cluster']['acc']:.2f} | {row['cluster']['miou']:.2f} |" in report
    assert (tmp_path / "demo" / "qualitative_test.png").is_file() and (tmp_path / "demo" / "loss.png").is_file()


def test_unknown_dataset_is_a_clear_cli_error(capsys, tmp_cache):
    assert main(["extract", "--dataset", "imagenet", "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "camvid" in err and "toy" in err


def test_bad_resolution_is_a_clear_cli_error(capsys, tmp_cache):
    assert main(["extract", "--dataset", "toy", "--split", "val", "--res", "200"]) == 1
    assert "multiples of its patch size 14" in capsys.readouterr().err


def test_prepare_is_forwarded_to_the_five_crop_command(capsys, tmp_path):
    assert main(["prepare", "five-crop", "--dataset", "cocostuff27", "--root", str(tmp_path / "missing")]) == 1
    assert "Expected layout" in capsys.readouterr().out
