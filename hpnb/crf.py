"""Dense CRF post-processing with the official constants (spec §4.3), through `pydensecrf2` (imports as pydensecrf).

The CRF is optional: nothing here imports pydensecrf at import time; calling `dense_crf` without it installed
raises an error that names the package to install.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hpnb.utils import HpnbError

PYDENSECRF_PIN = "pydensecrf2==1.1"
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
