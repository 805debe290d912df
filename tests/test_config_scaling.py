"""The small presets keep the official operating point, and docs/deviations.md shows the table the code computes."""

from pathlib import Path

import pytest

from hpnb.config import (
    CAMVID_CPU_ITERS,
    NOTEBOOK_ITERS,
    REFERENCE_ITERS,
    TOY_ITERS,
    get_config,
    operating_point,
    scale_table,
    scaled,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "preset, iters", [("toy", TOY_ITERS), ("toy-notebook", NOTEBOOK_ITERS), ("camvid-cpu", CAMVID_CPU_ITERS)]
)
def test_small_presets_keep_the_official_operating_point(preset, iters):
    ref = operating_point(get_config("cocostuff27").to_dict(), REFERENCE_ITERS)
    small = operating_point(get_config(preset).to_dict(), iters)
    assert small["negatives_per_positive"] == pytest.approx(ref["negatives_per_positive"], rel=0.02)
    assert small["warmup_share"] == pytest.approx(ref["warmup_share"], abs=0.01)
    assert small["k_over_c"] == ref["k_over_c"]
    # the EMA horizon and the renewal keep their share, down to one iteration
    assert small["ema_horizon_share"] <= max(ref["ema_horizon_share"] * 1.05, 1 / iters)
    assert small["renew_share"] <= max(ref["renew_share"] * 1.1, 1 / iters)


def test_scaled_by_hand():
    assert scaled(128, 222) == {"rho": 0.32, "ema_m": 0.477, "lam_warmup": 19, "renew_every": 2, "dim": 512}
    assert scaled(2048, REFERENCE_ITERS)["ema_m"] == 0.99 and scaled(2048, REFERENCE_ITERS)["rho"] == 0.02


def test_the_document_shows_the_computed_table():
    table = scale_table({"toy": TOY_ITERS, "toy-notebook": NOTEBOOK_ITERS, "camvid-cpu": CAMVID_CPU_ITERS})
    assert table in (ROOT / "docs" / "deviations.md").read_text()
