"""Dense CRF: it sharpens a blurry prediction onto image edges; a missing package is a clear error for direct calls
and one line (then no CRF) for the entry points that resolve it."""

import numpy as np
import pytest
import torch

from hpnb import HpnbError
from hpnb.crf import CRF_MISSING_NOTE, crf_available, dense_crf, resolve_crf


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 is not installed")
def test_crf_snaps_a_blurred_boundary_to_the_image_edge():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, 16:] = 255  # sharp vertical edge at column 16
    # unaries: a soft ramp that puts the boundary at column ~12 with low confidence
    ramp = torch.linspace(-1, 1.5, 32).view(1, 1, 32).expand(1, 32, 32)
    logp = torch.cat([-ramp, ramp]).log_softmax(0)
    before = logp.argmax(0).numpy()
    after = dense_crf(image, logp).argmax(0)
    truth = (np.arange(32) >= 16)[None].repeat(32, 0)
    assert (before == truth).mean() < (after == truth).mean()
    assert (after == truth).mean() > 0.95


def test_missing_pydensecrf_names_the_package(no_pydensecrf):
    assert not crf_available()
    with pytest.raises(HpnbError, match="pip install pydensecrf2==1.1"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), torch.zeros(2, 4, 4))


def test_resolve_crf_without_pydensecrf_says_so_once(no_pydensecrf, monkeypatch, capsys):
    monkeypatch.setattr("hpnb.crf._missing_noted", False)
    assert resolve_crf(False) is False and capsys.readouterr().out == ""  # not requested: nothing to say
    assert resolve_crf(True) is False
    assert resolve_crf(True) is False  # a report loop asks again: no second line
    out = capsys.readouterr().out
    assert out == CRF_MISSING_NOTE + "\n"
    assert out.startswith("dense CRF: not installed (pip install -r requirements-crf.txt, needs a C++ compiler)")


@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 is not installed")
def test_resolve_crf_with_pydensecrf_keeps_the_request(monkeypatch, capsys):
    monkeypatch.setattr("hpnb.crf._missing_noted", False)
    assert resolve_crf(True) is True and resolve_crf(False) is False
    assert capsys.readouterr().out == ""
