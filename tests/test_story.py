"""What the series concludes from its saved runs (issue 24): per-seed differences, the comparison table, the saved
runs it reads, the toy world's class-own materials (`toy_link`), the probe's cone statistics, GHP purity in other
images, the raw-feature k-means segmenter of notebook 07, and the README's table equal to the one computed from
results/."""

from __future__ import annotations

import colorsys
import json
import warnings

import numpy as np
import pytest
import torch

import hpnb
from hpnb.data.toyworld import SKY, ToyWorld, make_scene
from hpnb.report import (
    COMPARISON_HEADER,
    SAVED_RUNS,
    comparison_table,
    paired,
    saved_comparison,
    saved_runs,
    table4_deltas,
    verdict,
)
from hpnb.utils import HpnbError, repo_root


def summary(hp: float, raw: float, hp_conv: float, raw_conv: float, empty_raw: int = 0) -> dict:
    """An evaluation summary with one number per (protocol, features) on every head and metric."""

    def res(v: float, empty: int = 0) -> dict:
        head = {"acc": v, "miou": v / 2, "iou": []}
        return {"cluster": dict(head), "linear": dict(head), "empty_clusters": empty}

    return {
        "classes": ["a", "b", "c"],
        "protocols": {
            "online": {"results": {"HP": res(hp), "raw features": res(raw, empty_raw)}},
            "converged": {"results": {"HP": res(hp_conv), "raw features": res(raw_conv)}},
        },
    }


FULL = [summary(50, 40, 48, 46, 2), summary(52, 38, 49, 45, 3), summary(54, 42, 47, 47, 2)]
EQ1 = [summary(51, 40, 40, 46), summary(55, 38, 39, 45), summary(53, 42, 41, 47)]


def test_differences_are_computed_per_seed_then_averaged():
    mean, std, diffs = paired(FULL, EQ1, "converged", "cluster", "acc")
    assert diffs == [8, 10, 6]
    assert mean == pytest.approx(8.0) and std == pytest.approx(2.0)
    mean, std, diffs = paired(FULL, None, "online", "cluster", "miou")  # HP − its own seed's raw features
    assert diffs == [5, 7, 6] and mean == pytest.approx(6.0)
    with pytest.raises(ValueError, match="one summary per seed"):
        paired(FULL, EQ1[:2], "online", "cluster", "acc")


def test_the_verdict_needs_more_than_twice_the_spread():
    assert verdict(8.0, 2.0) == "clear: above"
    assert verdict(-5.0, 2.4) == "clear: below"
    assert verdict(4.0, 2.0) == "within the seed spread"
    assert verdict(-1.0, 3.3) == "within the seed spread"


def test_the_comparison_table_sets_hp_beside_eq1_and_the_raw_features_per_protocol():
    lines = comparison_table({"(a) full HP": FULL, "(g) plain Eq. 1": EQ1}, "runs")
    assert len(lines) == 2 * 6  # per protocol: raw, (a), (g), (a) − (g), (a) − raw, (g) − raw
    converged = lines[6:]
    row = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:9]] for line in converged}
    assert row["(a) full HP − (g) plain Eq. 1"][0] == "+8.0 ± 2.0"
    assert row["(g) plain Eq. 1 − raw"][0] == "-6.0 ± 0.0"  # 40−46, 39−45, 41−47
    assert row["raw features"][0] == "46.0 ± 1.0"
    online = {line.split("|")[3].strip(): line.split("|")[8].strip() for line in lines[:6]}
    assert online["raw features"] == "2.3 ± 0.6 of 3" and online["(a) full HP − raw"] == "–"
    assert COMPARISON_HEADER[0].count("|") == lines[0].count("|")


def test_table4_deltas_are_rows_minus_full_hp_and_the_raw_line():
    deltas = table4_deltas({"toy": {"(a) full HP": FULL, "(g) plain Eq. 1": EQ1}}, metric="acc")
    conv = deltas["converged"]["toy (3 seeds)"]
    assert conv["(g) plain Eq. 1"] == pytest.approx((-8.0, 2.0))
    assert conv["raw features"][0] == pytest.approx((46 + 45 + 47 - 48 - 49 - 47) / 3)


def test_every_saved_entry_reads_with_one_summary_per_seed():
    for name in SAVED_RUNS:
        runs = saved_runs(name)
        counts = {len(v) for v in runs.values()}
        assert len(counts) <= 1, name
        for summaries in runs.values():
            assert all("protocols" in s for s in summaries)
    with pytest.raises(HpnbError, match="unknown saved runs"):
        saved_runs("nope")


def test_saved_runs_refuse_rows_with_different_seed_counts(tmp_path):
    folder = tmp_path / "camvid"
    folder.mkdir()
    for seed in (0, 1):
        (folder / f"full_seed{seed}_test.json").write_text(json.dumps(FULL[seed]))
    (folder / "eq1_seed0_test.json").write_text(json.dumps(EQ1[0]))
    with pytest.raises(HpnbError, match="different numbers of seeds"):
        saved_runs("camvid", root=tmp_path)


def test_the_readme_table_is_the_one_computed_from_results():
    """The README quotes the saved comparison verbatim: a changed result or an edited number fails here."""
    readme = (repo_root() / "README.md").read_text()
    table = saved_comparison(("camvid", "toy-notebook"))
    assert table in readme, "README.md: paste the output of hpnb.report.saved_comparison() into its results section"


def test_camvid_reproduces_table4_a_over_g_under_the_converged_protocol():
    """The one clear result the series teaches (notebooks 05, 06, README): (a) > (g) on every CamVid seed under (ii)."""
    runs = saved_runs("camvid")
    mean, std, diffs = paired(runs["(a) full HP"], runs["(g) plain Eq. 1"], "converged", "cluster", "acc")
    assert len(diffs) == 3 and min(diffs) > 0 and verdict(mean, std) == "clear: above"


def test_toy_link_zero_is_the_shipped_world_and_validates_its_range():
    a, b = make_scene(7, 64, seed=1), make_scene(7, 64, seed=1, link=0.0)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert "link" not in ToyWorld("val", n=2, res=32).cache_extra
    assert "link=1.0" in ToyWorld("val", n=2, res=32, link=1.0).cache_extra
    for bad in (-0.1, 1.5):
        with pytest.raises(HpnbError, match="0 <= link <= 1"):
            make_scene(0, 32, link=bad)
        with pytest.raises(HpnbError, match="0 <= link <= 1"):
            ToyWorld("val", n=2, res=32, link=bad)
    cfg = hpnb.config.get_config("toy-notebook", toy_link=0.5)
    assert hpnb.runs.dataset_for(cfg, "val", 32, 2).link == 0.5
    assert "toy_link" not in hpnb.config.get_config("toy").to_dict()  # old run folders keep their digest


def test_toy_link_one_paints_the_sky_in_its_own_blue():
    hues = {0.0: [], 1.0: []}
    for link in hues:
        for i in range(12):
            img, lab = make_scene(i, 64, seed=0, link=link)
            sky = img[lab == SKY].mean(0) / 255
            hues[link].append(colorsys.rgb_to_hsv(*sky)[0])
    assert all(0.45 < h < 0.72 for h in hues[1.0])  # SIGNATURES: sky hue 0.55–0.62, before lighting
    assert not all(0.45 < h < 0.72 for h in hues[0.0])  # the shared pool: any colour


def test_cone_stats_tell_a_narrow_cone_from_spread_directions():
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(384, generator=g)
    narrow = centre + 0.1 * centre.norm() / 384**0.5 * torch.randn(5000, 384, generator=g)
    spread = torch.randn(5000, 384, generator=g)
    a, b = hpnb.probes.cone_stats(narrow, 11), hpnb.probes.cone_stats(spread, 11)
    assert a["patch_cos"] > 0.8 and abs(b["patch_cos"]) < 0.02
    assert a["centroid_cos"] < 0.1 and b["centroid_cos"] < 0.1  # random directions: nearly orthogonal either way
    assert a["top_share"] > 0.9 and a["winners_at_start"] <= 4  # one centroid nearest to almost every patch
    assert b["winners_at_start"] == 11 and b["top_share"] < 0.2


def test_ghp_stats_split_adds_the_purity_of_positives_in_other_images(random_backbone, tmp_cache):
    from hpnb.features import extract_features

    fs = extract_features(random_backbone, ToyWorld("val", n=6, res=56), progress=False)
    plain = hpnb.widgets.ghp_stats(fs, pool_size=3, n_images=2)
    split = hpnb.widgets.ghp_stats(fs, pool_size=3, n_images=2, split=True)
    assert "purity_other" not in plain and {**plain, "purity_other": split["purity_other"]} == split
    assert 0.0 <= split["purity_other"] <= 1.0
    assert "purity in other images" in hpnb.widgets.stats_table([split])


def test_the_raw_kmeans_segmenter_matches_its_clusters_to_the_runs(random_backbone, tmp_path, monkeypatch):
    from test_folder import make_folder, tiny_folder_config

    from hpnb.data import FolderWarning
    from hpnb.train import train

    monkeypatch.setenv("HPNB_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "photos")
    cfg = tiny_folder_config(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FolderWarning)
        train(cfg, out=tmp_path / "run", backbone=random_backbone, progress=False)
        seg = hpnb.predict.Segmenter(tmp_path / "run", crf=False, backbone=random_backbone)
        fs = hpnb.features.extract_features(
            random_backbone, hpnb.runs.dataset_for(cfg, "train", cfg.res), progress=False
        )
    raw = hpnb.predict.raw_kmeans_segmenter(seg, fs)
    photo = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    labels = raw(photo)
    assert labels.shape == (70, 90) and labels.min() >= 0 and labels.max() < len(seg.names)
    assert raw.names == seg.names and (raw.colours == seg.colours).all()
    # the matched centroids are a permutation of k-means' own
    from hpnb.baseline import kmeans, sample_patches

    own = kmeans(sample_patches(fs, 100_000, 0), len(seg.names), seed=0)
    got = raw.model.cluster_probe.centroids.detach()
    assert sorted(map(tuple, own.numpy().round(5))) == sorted(map(tuple, got.numpy().round(5)))


def test_the_toy_world_reverses_the_order_at_every_saved_scale():
    """What notebook 06 teaches about the toy world: plain Eq. 1 ahead of full HP under (ii), clearly at the
    notebooks' scale and at the toy preset's, and on every seed (not clearly) with class-own materials."""
    for name, clear in (("toy-notebook", True), ("toy", True), ("toy-link-1.0", False)):
        runs = saved_runs(name)
        assert len(runs["(a) full HP"]) == 3, name
        mean, std, diffs = paired(runs["(a) full HP"], runs["(g) plain Eq. 1"], "converged", "cluster", "miou")
        assert max(diffs) < 0, (name, diffs)
        assert (verdict(mean, std) == "clear: below") == clear, (name, mean, std)


def test_docs_results_is_what_results_gives():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(repo_root() / "tools" / "results_doc.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_demo_report_sets_hp_beside_plain_eq1_from_the_saved_runs():
    from hpnb.demo import eq1_comparison, seed_spread

    rows = eq1_comparison()
    assert rows == saved_comparison(("toy", "camvid")).splitlines()
    assert any("toy preset" in r and "3 seeds" in r for r in rows)
    # the preset's own spread reads the shipped preset's runs only, not the plain Eq. 1 runs beside them
    assert seed_spread()[0].startswith("| 3 seeds (0, 1, 2), results/sweep/toy-preset")
