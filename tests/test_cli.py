"""The command line and the demo job (small sizes)."""

import torch

from hpnb.__main__ import main
from hpnb.crf import CRF_MISSING_NOTE, crf_available


def test_demo_trains_evaluates_and_reports_the_computed_numbers(tmp_path, tmp_cache, monkeypatch):
    from hpnb.backbones import load_backbone
    from hpnb.demo import run_demo

    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14_imgfocus", weights="random")
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    summary = run_demo(
        out=tmp_path / "demo",
        progress=False,
        n_train=12,
        n_val=4,
        res=56,
        val_res=56,
        dim=8,
        pool_size=6,
        batch_size=4,
        epochs=1,
        aug_views=1,
        val_every=3,
        crf_workers=1,
    )
    report = (tmp_path / "demo" / "report.md").read_text()
    heads = ("cluster", "cluster+crf", "linear", "linear+crf") if crf_available() else ("cluster", "linear")
    for protocol in ("online", "converged"):  # both protocols, HP beside the raw features, in the report's table
        for method in ("HP", "raw features"):
            row = summary["protocols"][protocol]["results"][method]
            # the CRF refines protocol (i) only; without the optional CRF there are no "+crf" heads at all
            expected = set(heads) if protocol == "online" else {"cluster", "linear"}
            assert set(row) == {*expected, "empty_clusters"}
            assert all(0 <= row[h]["acc"] <= 100 for h in expected) and 0 <= row["empty_clusters"] <= 8
            assert f"| {method} | {row['cluster']['acc']:.1f} | {row['cluster']['miou']:.1f} |" in report
    assert (tmp_path / "demo" / "qualitative_test.png").is_file() and (tmp_path / "demo" / "loss.png").is_file()


def test_evaluate_and_predict_without_pydensecrf_run_to_the_end(
    tmp_path, tmp_cache, monkeypatch, capsys, random_backbone, no_pydensecrf
):
    import numpy as np
    from PIL import Image

    from hpnb.config import get_config
    from hpnb.report import evaluate_run
    from hpnb.train import train

    backbone = random_backbone
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    monkeypatch.setattr("hpnb.crf._missing_noted", False)
    cfg = get_config(
        "toy",
        n_train=4,
        n_val=2,
        res=56,
        val_res=56,
        dim=8,
        pool_size=4,
        batch_size=4,
        epochs=1,
        aug_views=1,
        val_every=1,
        crf=True,
        crf_workers=1,
    )
    run = train(cfg, out=tmp_path / "run", backbone=backbone, progress=False).out
    capsys.readouterr()
    summary = evaluate_run(run, split="test", crf=True, progress=False, workers=1)
    for protocol in summary["protocols"].values():
        for row in protocol["results"].values():
            assert set(row) == {"cluster", "linear", "empty_clusters"}
    report = (run / "report_test.md").read_text()
    assert "cluster Acc" in report and "+crf" not in report and (run / "qualitative_test.png").is_file()
    assert main(["evaluate", str(run), "--no-baseline", "--workers", "1"]) == 0
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "labels.npy")]) == 0
    assert np.load(tmp_path / "labels.npy").shape == (30, 40)
    out = capsys.readouterr().out
    assert out.count(CRF_MISSING_NOTE) == 1, out  # one line for the whole process, not one per call
    assert "+crf" not in out and "report:" in out


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
