"""hpnb: Hidden Positives for unsupervised semantic segmentation (Seong et al., CVPR 2023), for teaching.

Modules (one idea each, layered as the README's "Architecture" table says): `utils`, `printing`, `metrics`; `data`
(one registry for every dataset), `backbones`, `features`, `crf`; `config`, `positives`, `heads`, `losses`, `model`,
`baseline`; `runs`, `evaluate`, `train`, `predict`; `viz`, `widgets`, `check`, `report`, `demo`, `toyworld`.
Heavy submodules are imported on first use, so `import hpnb` stays fast.
"""

from __future__ import annotations

import importlib

from hpnb.utils import HpnbError, __version__, pick_device, setup

__all__ = ["HpnbError", "pick_device", "setup", "__version__"]

_SUBMODULES = {
    "data",
    "toyworld",
    "backbones",
    "features",
    "metrics",
    "crf",
    "baseline",
    "onnx_convert",
    "config",
    "heads",
    "positives",
    "losses",
    "model",
    "runs",
    "train",
    "evaluate",
    "report",
    "viz",
    "demo",
    "download",
    "widgets",
    "check",
    "printing",
    "probes",
}


def __getattr__(name: str):
    if name == "predict":  # hpnb.predict(image, run, crf=True): one image -> label map (a callable module)
        return importlib.import_module("hpnb.predict")
    if name in _SUBMODULES:
        return importlib.import_module(f"hpnb.{name}")
    raise AttributeError(f"module 'hpnb' has no attribute {name!r}")
