"""Figures shared by the notebooks, the CLI and reports: fixed class palettes and image | label grids."""
from __future__ import annotations

import matplotlib

import numpy as np
import torch

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


def label_grid(images: np.ndarray, columns: dict[str, np.ndarray], classes: list[str], colours: np.ndarray,
               max_rows: int = 4):
    """Figure with one row per image: the photo, then one colour-coded label map per named column."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = np.asarray(colours, dtype=np.uint8)
    rows = min(max_rows, len(images))
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(rows, ncol, figsize=(2.2 * ncol, 2.2 * rows + 0.6), squeeze=False)
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
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(classes)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def use_headless_backend() -> None:
    """Select matplotlib's file-only backend (CLI and tests; notebooks keep their inline backend)."""
    matplotlib.use("Agg")
