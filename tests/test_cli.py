"""The command line and the demo job (small sizes)."""
import json

import pytest

from hpnb.__main__ import main


def test_demo_writes_a_report_with_the_computed_numbers(tmp_path, tmp_cache):
    from hpnb.demo import run_demo

    summary = run_demo(out=tmp_path / "demo", n_train=12, n_val=6, progress=False)
    saved = json.loads((tmp_path / "demo" / "baseline.json").read_text())
    assert saved["kmeans"]["acc"] == summary["kmeans"]["acc"] and saved["kmeans"]["miou"] == summary["kmeans"]["miou"]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert f"| {summary['kmeans']['acc']:.2f} | {summary['kmeans']['miou']:.2f} |" in report
    assert (tmp_path / "demo" / "qualitative.png").stat().st_size > 10_000
    assert 0 < summary["kmeans"]["acc"] < 100


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
