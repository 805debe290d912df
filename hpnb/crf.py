"""Dense CRF post-processing with the official constants (spec §4.3), through `pydensecrf2` (imports as pydensecrf).

The CRF is optional (`pip install -r requirements-crf.txt`, or `pip install -e .[crf]`): nothing here imports
pydensecrf at import time; calling `dense_crf` without it installed raises an error that names the package to
install, while `resolve_crf` lets the evaluation and prediction entry points go on without the CRF.

`crf_batch` runs the CRF over many images on a process pool that cannot hang (STEGO's multiprocessing Pool hangs
for several users, ST issue #16): spawned workers, results collected with a timeout, and on any pool failure a
serial loop finishes the images that are not done yet.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hpnb.utils import HpnbError

PYDENSECRF_PIN = "pydensecrf2==1.1"  # the same pin as requirements-crf.txt
CRF_MISSING_NOTE = (
    "dense CRF: not installed (pip install -r requirements-crf.txt, needs a C++ compiler); showing results without it"
)
_missing_noted = False  # the note above is printed once per process
# official parameters (spec §4.3)
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 1, 3
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 67, 3, 4
ITERATIONS = 10


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise HpnbError(
            "The dense CRF needs the package pydensecrf2 (it imports as `pydensecrf`), which is not installed.\n"
            f"Run: pip install {PYDENSECRF_PIN}   (needs a C++ compiler; builds in about 30 s)"
        ) from err
    return dcrf, unary_from_softmax


def crf_available() -> bool:
    """True when pydensecrf can be imported."""
    try:
        _densecrf()
    except HpnbError:
        return False
    return True


def status_line() -> str:
    """One line for notebooks: whether the dense CRF can run here (machine-dependent; nbval sanitizes it)."""
    if crf_available():
        return "dense CRF: available"
    return "dense CRF: not installed, results without it (to add it: pip install -r requirements-crf.txt)"


def resolve_crf(requested: bool) -> bool:
    """Whether to run the CRF: `requested` and pydensecrf importable. A request that cannot be met prints one line
    (once per process) and the caller goes on without the CRF."""
    global _missing_noted
    if not requested:
        return False
    if crf_available():
        return True
    if not _missing_noted:
        print(CRF_MISSING_NOTE)
        _missing_noted = True
    return False


def dense_crf(image: np.ndarray, log_probs: torch.Tensor | np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """Refine per-pixel class log-probabilities (C, h, w) on a uint8 image (H, W, 3); returns Q as (C, H, W) float32."""
    dcrf, unary_from_softmax = _densecrf()
    image = np.ascontiguousarray(image[:, :, ::-1])  # RGB -> BGR as the official code (irrelevant: isotropic kernel)
    h, w = image.shape[:2]
    logp = torch.as_tensor(log_probs).float()
    if logp.ndim != 3:
        raise HpnbError(f"dense_crf expects log-probabilities of shape (C, h, w), found {tuple(logp.shape)}")
    logp = F.interpolate(logp[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    probs = logp.softmax(dim=0).numpy()
    n_labels = probs.shape[0]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=image, compat=BILATERAL_COMPAT)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_labels(image: np.ndarray, log_probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Prediction after the CRF (spec §4.3): argmax over classes of Q, a (H, W) int64 label map."""
    return dense_crf(image, log_probs).argmax(0).astype(np.int64)


def _crf_worker_init() -> None:
    """One torch thread per worker process: the pool, not torch, spreads the work over the cores."""
    torch.set_num_threads(1)


def _crf_job(index: int, image: np.ndarray, log_probs: np.ndarray) -> tuple[int, np.ndarray]:
    """Worker task (module level so that spawn can pickle it): the image's index and its CRF label map."""
    return index, crf_labels(image, log_probs)


def _as_numpy_inputs(
    images: Sequence[np.ndarray] | np.ndarray, log_probs: Sequence | torch.Tensor | np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check the batch and turn it into per-image numpy arrays: uint8 (H, W, 3) images, float32 (C, h, w) log-probs."""
    images = [np.asarray(im.cpu() if isinstance(im, torch.Tensor) else im) for im in images]
    logps = [
        (lp.detach().cpu().float().numpy() if isinstance(lp, torch.Tensor) else np.asarray(lp, np.float32))
        for lp in log_probs
    ]
    if len(images) != len(logps):
        raise HpnbError(
            f"crf_batch needs one log-probability map per image, found {len(images)} images and {len(logps)} maps"
        )
    for i, (im, lp) in enumerate(zip(images, logps, strict=True)):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise HpnbError(
                f"crf_batch expects uint8 images of shape (H, W, 3), found {im.dtype} {im.shape} at index {i}"
            )
        if lp.ndim != 3:
            raise HpnbError(f"crf_batch expects log-probabilities of shape (C, h, w), found {lp.shape} at index {i}")
    return images, logps


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting: cancel queued work and terminate workers that may hang."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # private, as Python < 3.14 has no
    pool.shutdown(wait=False, cancel_futures=True)  # terminate_workers(); shutdown clears it
    for proc in procs:
        if proc.is_alive():
            proc.terminate()


def _crf_pool(
    images: list[np.ndarray],
    logps: list[np.ndarray],
    workers: int,
    timeout: float,
    results: dict[int, np.ndarray],
    bar: tqdm,
) -> str | None:
    """Fill `results` from a spawn process pool; returns None on success, else why the pool was given up."""
    pool = None
    try:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_crf_worker_init
        )
        pending: set[Future] = {
            pool.submit(_crf_job, i, im, lp) for i, (im, lp) in enumerate(zip(images, logps, strict=True))
        }
        while pending:
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                return f"no image finished within {timeout:g} s"
            for future in done:
                index, labels = future.result()  # re-raises a worker's own error (e.g. a bad input) unchanged
                results[index] = labels
                bar.update(1)
    except (BrokenProcessPool, OSError, pickle.PicklingError) as err:
        return f"{type(err).__name__}: {err}".strip().splitlines()[0]
    finally:
        if pool is not None:
            _stop_pool(pool)  # also on success: a worker still starting up would delay a graceful shutdown
    return None


def crf_batch(
    images: Sequence[np.ndarray] | np.ndarray,
    log_probs: Sequence | torch.Tensor | np.ndarray,
    workers: int | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> list[np.ndarray]:
    """CRF label maps (H, W) int64 of many images (spec §4.3), in input order, on `workers` processes.

    `images`: uint8 (H, W, 3) each; `log_probs`: (C, h, w) each. `workers=None` uses min(cores, images);
    `workers<=1` or one image runs serially. `timeout`: seconds to wait for the next image before the pool is
    given up; then, or if the pool breaks, the remaining images are done serially after one warning line.
    """
    _densecrf()  # a missing pydensecrf is a clear error before any process starts
    images, logps = _as_numpy_inputs(images, log_probs)
    n = len(images)
    if workers is None:
        workers = min(os.cpu_count() or 1, n)
    results: dict[int, np.ndarray] = {}
    with tqdm(total=n, desc="CRF", disable=not progress, leave=False) as bar:
        if workers > 1 and n > 1:
            failure = _crf_pool(images, logps, min(workers, n), timeout, results, bar)
            if failure is not None:
                print(
                    f"warning: CRF process pool given up ({failure}); running the {n - len(results)} remaining "
                    "images serially",
                    file=sys.stderr,
                )
        for i in range(n):
            if i not in results:
                results[i] = crf_labels(images[i], logps[i])
                bar.update(1)
    return [results[i] for i in range(n)]
