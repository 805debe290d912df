"""The command line and the demo job (small sizes)."""

import re

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


# ---- python -m hpnb train: the run folder ---------------------------------------------------------------------

TINY_ARGS = [
    *("n_train=12", "n_val=4", "res=56", "val_res=56", "dim=8", "pool_size=6", "batch_size=4", "epochs=2"),
    *("aug_views=1", "val_every=3", "checkpoint_every=2", "lam_warmup=1", "renew_every=2", "rho=0.3", "crf=false"),
]


def test_train_refuses_another_configs_folder_before_anything_is_written(tmp_path, capsys, tmp_cache):
    from hpnb.config import get_config, parse_overrides

    get_config("toy", **parse_overrides(TINY_ARGS)).save(tmp_path / "config.json")
    before = (tmp_path / "config.json").read_bytes()
    assert main(["train", "--out", str(tmp_path), *TINY_ARGS, "tau=0.5"]) == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path} holds the run of another config (tau 0.6 → 0.5; saved → requested)" in captured.err
    assert f"--out {tmp_path}-new" in captured.err and "--resume" in captured.err and captured.out == ""
    assert main(["train", "--out", str(tmp_path), "--resume", *TINY_ARGS, "epochs=3"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "(epochs 2 → 3; saved → requested)" in err
    assert (tmp_path / "config.json").read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_train_says_the_runs_size_before_it_starts(tmp_path, capsys, tmp_cache, monkeypatch, random_backbone):
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: random_backbone)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"train toy -> {out}: 6 steps: 2 epochs × 3 iterations of 4 images from 12 training images; validation "
        "every 3 steps, a checkpoint every 2"
    )
    assert re.fullmatch(  # measured on the first 3 steps, said before the other 3 run
        r"time: about \d+ s for the remaining 3 steps \(\d+\.\d\d s a step over the first 3 on this machine\), plus a "
        r"validation every 3 steps; the progress bar updates this as it goes",
        lines[1],
    ), lines[1]
    assert lines[2].startswith(f"trained 6 steps -> {out}; best on val:")
    assert main(["train", "--out", str(out), "--resume", *TINY_ARGS, "max_iters=4"]) == 1  # the run's length is fixed
    assert "max_iters null → 4" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", *TINY_ARGS]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "resuming at step 6 of 6"


def test_train_says_when_no_checkpoint_was_selected_on_val(tmp_path, capsys, tmp_cache, monkeypatch):
    import json

    from hpnb.train import TrainResult

    def all_nan(cfg, out, resume, estimate=False):  # what the trainer leaves when every validation score was NaN
        reason = "every validation score was NaN (steps 3, 6)"
        out.mkdir()
        (out / "metrics.json").write_text(json.dumps({"best": {"step": None, "score": None, "reason": reason}}))
        return TrainResult(out=out, model=None, best={"step": None, "score": None, "reason": reason}, last={}, steps=6)

    monkeypatch.setattr("hpnb.train.train", all_nan)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint was selected on val: every validation score was NaN (steps 3, 6)" in err
    assert f"python -m hpnb evaluate {tmp_path / 'run'} --checkpoint last" in err


def test_evaluate_names_a_damaged_checkpoint(tmp_path, capsys):
    import os

    from hpnb.config import get_config

    get_config("toy").save(tmp_path / "config.json")
    (tmp_path / "checkpoint.pt").write_bytes(os.urandom(200))
    assert main(["evaluate", str(tmp_path)]) == 1
    assert f"error: {tmp_path / 'checkpoint.pt'} is damaged: torch cannot read it" in capsys.readouterr().err
