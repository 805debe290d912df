"""Figures shared by the notebooks, the CLI and reports: fixed class palettes, image | label grids, confusion
heatmaps and per-class IoU tables."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import torch

from hpnb.utils import HpnbError

IGNORE_COLOUR = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """A fixed (n, 3) uint8 palette (tab20, then tab20b), the same in every run and figure."""
    import matplotlib.pyplot as plt

    colours = list(plt.get_cmap("tab20").colors) + list(plt.get_cmap("tab20b").colors)
    return (np.array([colours[i % len(colours)] for i in range(n)]) * 255).round().astype(np.uint8)


def colorize(label: torch.Tensor | np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Label map (H, W) with -1 = ignore -> RGB uint8 (H, W, 3)."""
    label = np.asarray(label, dtype=np.int64)
    colours = np.asarray(colours, dtype=np.uint8)
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label >= 0
    out[valid] = colours[label[valid]]
    out[~valid] = IGNORE_COLOUR
    return out


def label_grid(
    images: np.ndarray, columns: dict[str, np.ndarray], classes: list[str], colours: np.ndarray, max_rows: int = 4
):
    """Figure with one row per image: the photo, then one colour-coded label map per named column.

    The ground truth is a column like any other, e.g. {"ground truth": gt, "cluster": c, "linear": l, "+CRF": r}.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = np.asarray(colours, dtype=np.uint8)
    rows = min(max_rows, len(images))
    ncol = 1 + len(columns)
    legend_cols = max(1, min(len(classes), max(6, 2 * ncol)))
    legend_h = 0.25 + 0.18 * math.ceil(len(classes) / legend_cols)  # inches kept free below the grid
    height = 2.2 * rows + legend_h
    fig, axes = plt.subplots(rows, ncol, figsize=(2.2 * ncol, height), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(np.asarray(images[r]))
        for c, (title, labels) in enumerate(columns.items(), start=1):
            axes[r, c].imshow(colorize(labels[r], colours), interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    handles = [Patch(color=colours[i] / 255, label=name) for i, name in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return fig


def column_normalize(conf: np.ndarray) -> np.ndarray:
    """Divide each column (one ground-truth class) by its total; a column with no pixels becomes NaN."""
    conf = np.asarray(conf, dtype=np.float64)
    totals = conf.sum(axis=0, keepdims=True)
    return np.divide(conf, totals, out=np.full_like(conf, np.nan), where=totals > 0)


def _confusion_width(n: int) -> float:
    """Figure width in inches: at most 6 up to 12 classes, then growing slowly (9 for 27 classes)."""
    return 1.5 + 0.37 * n if n <= 12 else 5.94 + 0.2 * (n - 12)


def confusion_figure(conf: np.ndarray | torch.Tensor, classes: list[str], normalize: bool = True, title: str = ""):
    """Heatmap of a (C, C) class confusion (rows = predicted, cols = ground truth, spec §4.2); columns sum to 1."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    conf = np.asarray(conf, dtype=np.float64)
    n = len(classes)
    if conf.shape != (n, n):
        raise HpnbError(
            f"confusion_figure expects a ({n}, {n}) matrix for {n} classes, found {conf.shape}; "
            "pass hpnb.metrics.matched_confusion(...) for clusters"
        )
    data = column_normalize(conf) if normalize else conf
    width = _confusion_width(n)
    fig, ax = plt.subplots(figsize=(width, 0.85 * width))
    small = n <= 12
    sns.heatmap(
        data,
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=1 if normalize else None,
        square=True,
        annot=small,
        fmt=".2f" if normalize else ".0f",
        annot_kws={"fontsize": 6},
        xticklabels=classes,
        yticklabels=classes,
        cbar_kws={"shrink": 0.8},
    )
    ax.set_xlabel("ground truth", fontsize=8)
    ax.set_ylabel("predicted", fontsize=8)
    ax.tick_params(labelsize=7 if small else 6)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def iou_table(ious: dict[str, list[float]], classes: list[str]) -> str:
    """Markdown table of per-class IoU (%), one column per method, NaN as "–", and a last row with the nanmean."""
    for method, values in ious.items():
        if len(values) != len(classes):
            raise HpnbError(f"iou_table: method {method!r} has {len(values)} values for {len(classes)} classes")
    table = np.array([list(v) for v in ious.values()], dtype=np.float64).reshape(len(ious), len(classes))
    defined = ~np.isnan(table)
    means = [float(row[ok].mean()) if ok.any() else math.nan for row, ok in zip(table, defined, strict=True)]

    def cell(x: float) -> str:
        return "–" if math.isnan(x) else f"{x:.1f}"

    lines = ["| class | " + " | ".join(ious) + " |", "|---|" + "---:|" * len(ious)]
    lines += [f"| {name} | " + " | ".join(cell(x) for x in table[:, i]) + " |" for i, name in enumerate(classes)]
    lines.append("| mean | " + " | ".join(cell(m) for m in means) + " |")
    return "\n".join(lines) + "\n"


def crf_comparison(scores: dict, title: str = ""):
    """Bars of Acc and mIoU (%) per head, without and with the dense CRF when those heads are present.

    `scores`: {"cluster": Scores, "linear": ..., optionally "cluster+crf", "linear+crf"}. Without the CRF heads the
    same two panels show the plain heads and say how to add the CRF, so a notebook's output has the same shape on
    machines with and without pydensecrf."""
    import matplotlib.pyplot as plt

    heads = ("cluster", "linear")
    with_crf = all(f"{h}+crf" in scores for h in heads)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8))
    for ax, metric in zip(axes, ("acc", "miou"), strict=True):
        bars = {"without CRF": [getattr(scores[h], metric) for h in heads]}
        if with_crf:
            bars["with CRF"] = [getattr(scores[f"{h}+crf"], metric) for h in heads]
        width = 0.8 / len(bars)
        for k, (label, values) in enumerate(bars.items()):
            xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(heads))]
            drawn = ax.bar(xs, values, width, label=label)
            ax.bar_label(drawn, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(heads)), heads)
        ax.set_ylabel(f"{'Acc' if metric == 'acc' else 'mIoU'} (%)")
        ax.set_ylim(0, 1.2 * max(max(v) for v in bars.values()))
        ax.legend(fontsize=8, loc="lower right")
    note = "" if with_crf else " (dense CRF not installed: pip install -r requirements-crf.txt)"
    fig.suptitle((title or "Effect of the dense CRF") + note, fontsize=10)
    fig.tight_layout()
    return fig


def colorize_toyworld(label: np.ndarray | torch.Tensor) -> np.ndarray:
    """Toy-world label map (H, W) -> uint8 RGB (H, W, 3) with its fixed PALETTE; IGNORE (-1) pixels are black."""
    from hpnb.data.toyworld import N_CLASSES, PALETTE

    label = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(np.int64)
    if label.size and (label.min() < -1 or label.max() >= N_CLASSES):
        raise HpnbError(f"colorize expects labels in [-1, {N_CLASSES}), found [{label.min()}, {label.max()}]")
    return colorize(label, np.array(PALETTE, np.uint8))


def preview_toyworld(n: int = 8, res: int = 224, seed: int = 0, split: str = "train"):
    """A matplotlib Figure: n toy scenes (top) over their colour-coded labels (bottom), with a class legend."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from hpnb.data.toyworld import CLASSES, PALETTE, ToyWorld

    if n < 1:
        raise HpnbError(f"preview needs n >= 1 scenes, found {n}")
    data = ToyWorld(split, n=n, res=res, seed=seed)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for i in range(n):
        image, label = data.raw(i)
        axes[0, i].imshow(image)
        axes[1, i].imshow(colorize_toyworld(label), interpolation="nearest")
        axes[0, i].set_title(f"{split} {i}", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    handles = [Patch(color=np.array(rgb) / 255, label=name) for name, rgb in zip(CLASSES, PALETTE, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=len(CLASSES), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def use_headless_backend() -> None:
    """Select matplotlib's file-only backend (CLI and tests; notebooks keep their inline backend)."""
    matplotlib.use("Agg")
