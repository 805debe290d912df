"""crf_batch: the process pool gives exactly the serial labels in input order, and never hangs (it falls back)."""

import multiprocessing
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch

import hpnb.crf
from hpnb import HpnbError
from hpnb.crf import crf_available, crf_batch, crf_labels

needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 is not installed")
N_CLASSES = 4


def _scene(seed: int, h: int, w: int) -> tuple[np.ndarray, torch.Tensor]:
    """A blocky 4-class image (one colour per class) and noisy, blurry quarter-resolution log-probabilities."""
    g = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=np.int64)
    label[: h // 2, w // 3 :] = 1
    label[h // 2 :, : 2 * w // 3] = 2
    label[h // 3 : 2 * h // 3, w // 4 : w // 2] = 3
    colours = g.integers(0, 256, (N_CLASSES, 3))
    image = np.clip(colours[label] + g.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    small = torch.as_tensor(label[::4, ::4])
    logits = 1.5 * torch.nn.functional.one_hot(small, N_CLASSES).permute(2, 0, 1).float()
    logits += torch.as_tensor(g.normal(0, 1.0, logits.shape), dtype=torch.float32)
    return image, logits.log_softmax(0)


def _batch(n: int = 6) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """n scenes of two sizes (the large ones first, so parallel workers finish out of order)."""
    scenes = [_scene(i, 64 if i < n // 2 else 48, 80 if i < n // 2 else 64) for i in range(n)]
    return [s[0] for s in scenes], [s[1] for s in scenes]


def _serial(images, logps) -> list[np.ndarray]:
    return [crf_labels(im, lp) for im, lp in zip(images, logps, strict=True)]


class _NoPool:
    """Stands in for ProcessPoolExecutor where no pool may start."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("a process pool was started")


class _BrokenPool:
    """A pool whose workers have died: every submit raises BrokenProcessPool."""

    def __init__(self, *args, **kwargs):
        self.shut = False

    def submit(self, *args, **kwargs):
        raise BrokenProcessPool("a child process terminated abruptly")

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut = True


class _HungPool(_BrokenPool):
    """A pool whose workers hang: futures never complete."""

    def submit(self, *args, **kwargs):
        return Future()


@needs_crf
def test_parallel_equals_serial_in_input_order():
    images, logps = _batch()
    serial = _serial(images, logps)
    for labels, lp in zip(serial, logps, strict=True):  # the CRF changes labels of the plain (bilinear) prediction
        plain = torch.nn.functional.interpolate(lp[None], size=labels.shape, mode="bilinear")[0].argmax(0)
        assert (labels != plain.numpy()).mean() > 0.01
    out = crf_batch(images, logps, workers=2, timeout=60)
    assert len(out) == len(images)
    for got, want, im in zip(out, serial, images, strict=True):
        assert got.dtype == np.int64 and got.shape == im.shape[:2]
        np.testing.assert_array_equal(got, want)


@needs_crf
@pytest.mark.parametrize("pool", [_BrokenPool, _HungPool])
def test_pool_failure_falls_back_to_serial(monkeypatch, capsys, pool):
    images, logps = _batch(4)
    monkeypatch.setattr(hpnb.crf, "ProcessPoolExecutor", pool)
    out = crf_batch(images, logps, workers=2, timeout=0.2)
    for got, want in zip(out, _serial(images, logps), strict=True):
        np.testing.assert_array_equal(got, want)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "running the 4 remaining images serially" in err


@needs_crf
def test_timeout_stops_real_workers_without_waiting(capsys):
    images, logps = _batch(4)
    start = time.perf_counter()
    out = crf_batch(images, logps, workers=2, timeout=0.01)  # workers are still starting: the pool is given up
    assert time.perf_counter() - start < 20
    for got, want in zip(out, _serial(images, logps), strict=True):
        np.testing.assert_array_equal(got, want)
    assert "no image finished within 0.01 s" in capsys.readouterr().err
    for child in multiprocessing.active_children():
        child.join(timeout=10)
        assert not child.is_alive()


@needs_crf
@pytest.mark.parametrize("workers, n", [(1, 3), (0, 3), (None, 1), (4, 1)])
def test_one_worker_or_one_image_runs_serially(monkeypatch, workers, n):
    images, logps = _batch(n)
    monkeypatch.setattr(hpnb.crf, "ProcessPoolExecutor", _NoPool)
    out = crf_batch(images, torch.stack(logps) if n == 1 else logps, workers=workers)
    for got, want in zip(out, _serial(images, logps), strict=True):
        np.testing.assert_array_equal(got, want)


@needs_crf
def test_bad_inputs_are_clear_errors():
    images, logps = _batch(2)
    with pytest.raises(HpnbError, match="2 images and 1 maps"):
        crf_batch(images, logps[:1], workers=1)
    with pytest.raises(HpnbError, match=r"uint8 images of shape \(H, W, 3\)"):
        crf_batch([im.astype(np.float32) for im in images], logps, workers=1)


def test_missing_pydensecrf_fails_before_any_pool(no_pydensecrf, monkeypatch):
    monkeypatch.setattr(hpnb.crf, "ProcessPoolExecutor", _NoPool)
    with pytest.raises(HpnbError, match="pip install pydensecrf2==1.1"):
        crf_batch([np.zeros((4, 4, 3), np.uint8)] * 2, torch.zeros(2, 2, 4, 4), workers=2)
