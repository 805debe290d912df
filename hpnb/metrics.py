"""Segmentation metrics of the official evaluation (spec §4.2): confusion matrix, Hungarian matching, Acc, mIoU."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

IGNORE = -1  # label of unlabelled pixels everywhere in hpnb


def patch_labels(labels: torch.Tensor, grid: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """The label of each patch: the most frequent pixel label inside it, IGNORE counted as a label of its own.

    (n, H, W) with -1 = ignore -> (n, h, w). Ties go to IGNORE, then to the smaller class. This one definition is
    used for every purity and patch-class statistic in hpnb and the notebooks (evaluation only: HP never sees it).
    """
    labels = torch.as_tensor(labels).long()
    n_cls = int(labels.max().clamp_min(0)) + 2  # channel 0 = ignore, channel k + 1 = class k
    out = []
    for i in range(0, len(labels), chunk):
        one_hot = F.one_hot(labels[i : i + chunk].clamp_min(IGNORE) + 1, n_cls).permute(0, 3, 1, 2).float()
        counts = F.adaptive_avg_pool2d(one_hot, grid)  # share of each label in each patch
        out.append(counts.argmax(1) - 1)  # argmax keeps the first maximum: ignore, then the smallest class
    return torch.cat(out)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_pred: int, n_classes: int) -> torch.Tensor:
    """Counts (n_pred, n_classes) on the CPU: rows = predicted cluster/class, cols = ground truth; GT outside [0, C)
    ignored. Counted on the predictions' device: labels read from a CPU cache are moved there (on a GPU the
    predictions stay where they were computed)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, found {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device).long()
    keep = (target >= 0) & (target < n_classes)
    pred, target = pred[keep], target[keep]
    if pred.numel() and (pred.min() < 0 or pred.max() >= n_pred):
        raise ValueError(f"predictions must lie in [0, {n_pred}), found [{int(pred.min())}, {int(pred.max())}]")
    flat = pred * n_classes + target
    return torch.bincount(flat, minlength=n_pred * n_classes).reshape(n_pred, n_classes).cpu()


def hungarian_match(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """One-to-one map cluster -> class maximising matched pixels (`linear_sum_assignment`); -1 for unmatched clusters."""
    conf = np.asarray(conf)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = np.full(conf.shape[0], IGNORE, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def remap(pred: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    """Apply a cluster -> class mapping to a label map (unmatched clusters become IGNORE)."""
    return torch.as_tensor(mapping, device=pred.device)[pred.long()]


def matched_confusion(conf: torch.Tensor | np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Rows of `conf` summed into class rows by `mapping`: a (C, C) class confusion; unmatched rows are dropped."""
    conf = np.asarray(conf)
    n_classes = conf.shape[1]
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    for row, cls in enumerate(mapping):
        if cls >= 0:
            out[cls] += conf[row]
    return out


@dataclass
class Scores:
    """Pixel accuracy, mIoU (over classes whose IoU is defined) and per-class IoU, all in percent."""

    acc: float
    miou: float
    iou: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"acc": self.acc, "miou": self.miou, "iou": self.iou}

    def __str__(self) -> str:
        return f"Acc {self.acc:.1f}  mIoU {self.miou:.1f}"  # percent to one decimal: stable across CPUs


def scores(conf_cc: torch.Tensor | np.ndarray, column_totals: np.ndarray | None = None) -> Scores:
    """Acc = ΣTP / valid pixels; IoU_c = TP/(TP+FP+FN); mIoU = mean of the non-NaN IoUs (×100).

    `conf_cc` is a square (pred class, GT class) matrix. `column_totals` (pixels per GT class) defaults to the
    column sums; pass the unmatched-inclusive totals when some clusters were left without a class.
    """
    conf = np.asarray(conf_cc, dtype=np.float64)
    gt_total = conf.sum(0) if column_totals is None else np.asarray(column_totals, dtype=np.float64)
    tp = np.diag(conf)
    fp = conf.sum(1) - tp
    fn = gt_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    total = gt_total.sum()
    acc = float(tp.sum() / total) if total > 0 else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return Scores(acc=100 * acc, miou=100 * miou, iou=[float(100 * v) for v in iou])


class SegmentationMetric:
    """Accumulates a confusion matrix over a whole split; `compute()` Hungarian-matches clusters when asked."""

    def __init__(self, n_classes: int, n_pred: int | None = None, hungarian: bool = True):
        self.n_classes = n_classes
        self.n_pred = n_pred or n_classes
        self.hungarian = hungarian
        if not hungarian and self.n_pred != n_classes:
            raise ValueError("without Hungarian matching the number of predicted labels must equal the classes")
        self.conf = torch.zeros(self.n_pred, n_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.conf += confusion_matrix(pred, target, self.n_pred, self.n_classes)

    def mapping(self) -> np.ndarray:
        """Cluster -> class map (identity without Hungarian matching)."""
        return hungarian_match(self.conf) if self.hungarian else np.arange(self.n_classes)

    def compute(self) -> Scores:
        conf = self.conf.numpy()
        return scores(matched_confusion(conf, self.mapping()), column_totals=conf.sum(0))
