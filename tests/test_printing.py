"""Printed numbers: stable at the precision the science supports, yet a real change always shows."""

import numpy as np

from hpnb.printing import count, expect, num, pct


def test_formats():
    assert pct(0.7783) == "77.8" and pct(0.005) == "0.5" and pct(1.0) == "100.0"
    assert [count(x) for x in (853.31, 57.8, 4.0, 0.0)] == ["853", "57.8", "4", "0"]
    assert num(0.4167) == "0.42"


def test_a_metric_that_moves_by_half_a_point_prints_differently():
    same = [v for v in np.linspace(0.0, 0.99, 1997) if pct(v) == pct(v + 0.005)]
    assert not same, same[:5]


def test_a_count_that_moves_by_two_percent_prints_differently():
    same = [v for v in np.geomspace(1.0, 5000.0, 2001) if count(v) == count(v * 1.02)]
    assert not same, same[:5]


def test_expect_is_silent_within_the_tolerance_and_explains_outside(capsys):
    assert expect(51.37, 51.4, tol=0.5, what="k-means Acc") is None  # a cell ending with it shows nothing
    assert capsys.readouterr().out == ""
    expect(52.0, 51.4, tol=0.5, what="k-means Acc")
    out = capsys.readouterr().out
    assert "k-means Acc = 52 in this run" in out and "51.4 ± 0.5" in out
