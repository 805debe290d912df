"""Figures shared by the notebooks, the CLI and reports: fixed class palettes, image | label grids, confusion
heatmaps and per-class IoU tables."""

from __future__ import annotations

import math
import textwrap

import matplotlib
import numpy as np
import torch

from hpnb.train import HELD_OUT_DRAWS, training_log  # noqa: F401  (training_log lives with the trainer: loss.png)
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
    return min(6.0, 2.0 + 0.45 * n) if n <= 12 else 5.94 + 0.2 * (n - 12)


def confusion_figure(conf: np.ndarray | torch.Tensor, classes: list[str], normalize: bool = True, title: str = ""):
    """Heatmap of a (C, C) class confusion (rows = predicted, cols = ground truth, spec §4.2). Normalised, each
    column is one ground-truth class's pixels in % (it sums to 100) and the diagonal is each class's recall; up to 12
    classes every cell is written in whole %."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    conf = np.asarray(conf, dtype=np.float64)
    n = len(classes)
    if conf.shape != (n, n):
        raise HpnbError(
            f"confusion_figure expects a ({n}, {n}) matrix for {n} classes, found {conf.shape}; "
            "pass hpnb.metrics.matched_confusion(...) for clusters"
        )
    data = 100 * column_normalize(conf) if normalize else conf
    width = _confusion_width(n)
    fig, ax = plt.subplots(figsize=(width, 0.85 * width))
    small = n <= 12
    sns.heatmap(
        data,
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=100 if normalize else None,
        square=True,
        annot=small,
        fmt=".0f",
        annot_kws={"fontsize": 9 if n <= 8 else 7},
        xticklabels=classes,
        yticklabels=classes,
        cbar_kws={
            "shrink": 0.8,
            "label": "% of the ground-truth class (diagonal: recall)" if normalize else "pixels",
        },
    )
    ax.set_xlabel("ground truth")
    ax.set_ylabel("predicted")
    ax.tick_params(labelsize=9 if small else 7)
    ax.tick_params(axis="y", rotation=0)  # class names read left to right
    if title:
        ax.set_title(title, fontsize=10)
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


# -- inline figures in a notebook ----------------------------------------------------------------------------------

FIGURE_DPI = 150  # text of 8-10 pt is 17-21 px: readable from a projector's back row (at 100 dpi it was 11-14 px)
JPEG_ABOVE_KB = 200  # a figure whose PNG is larger than this is mostly photo pixels: it is sent as JPEG instead
JPEG_QUALITY = 90


def figure_bytes(fig, jpeg_above_kb: float = JPEG_ABOVE_KB) -> tuple[str, bytes]:
    """The figure as ("png", bytes), or as ("jpeg", bytes) when its PNG is over `jpeg_above_kb` and the JPEG smaller.

    Line plots, bar charts and diagrams compress well as PNG and stay sharp; panels of photos and feature maps do not
    (a 150 dpi PNG of one is 1-3 MB), and JPEG at quality 90 keeps them at a fifth of that with no visible loss.
    """
    from IPython.core.pylabtools import print_figure

    png = print_figure(fig, "png", bbox_inches="tight")
    if len(png) <= jpeg_above_kb * 1000:
        return "png", png
    jpeg = print_figure(fig, "jpeg", bbox_inches="tight", pil_kwargs={"quality": JPEG_QUALITY})
    return ("jpeg", jpeg) if len(jpeg) < len(png) else ("png", png)


def inline_figures(dpi: int = FIGURE_DPI, jpeg_above_kb: float = JPEG_ABOVE_KB) -> None:
    """Draw this notebook's figures at `dpi` and send each as PNG, or as JPEG when it is mostly photo pixels.

    Call it once, after `import matplotlib.pyplot`, in a notebook's first code cell. Outside IPython it only sets
    the dpi. Every notebook stays under 2 MB so (tests/test_notebooks.py).
    """
    import matplotlib.pyplot as plt

    plt.rcParams["figure.dpi"] = dpi
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with jupyterlab
        return
    shell = get_ipython()
    if shell is None:
        return
    # pyplot loads its backend on first use, and the inline backend then registers its own PNG formatter over any
    # registered before: load it now, so that the formatters below are the ones that stay
    plt.switch_backend(matplotlib.get_backend())
    pending: dict = {}  # IPython asks the PNG formatter, then the JPEG one, for the same figure: render it once

    def render(fig, fmt: str) -> bytes | None:
        if pending.get("fig") is not fig or fmt in pending["asked"]:
            pending.clear()
            pending.update(fig=fig, out=figure_bytes(fig, jpeg_above_kb), asked=set())
        pending["asked"].add(fmt)
        kind, data = pending["out"]
        if len(pending["asked"]) == 2:
            pending.clear()  # a figure drawn again (a widget's redraw) is rendered again
        return data if kind == fmt else None

    formatters = shell.display_formatter.formatters
    for fmt in ("png", "jpeg"):
        formatters[f"image/{fmt}"].for_type(matplotlib.figure.Figure, lambda fig, fmt=fmt: render(fig, fmt))
    for fmt in ("image/svg+xml", "application/pdf"):
        formatters[fmt].pop(matplotlib.figure.Figure, None)


# -- box-and-arrow diagrams (notebook 00's overview of the method) -----------------------------------------------

DIAGRAM_COLOURS = {
    "frozen": "#d9d9d9",
    "trained": "#9ecae1",
    "momentum (no grad)": "#c7b8e0",
    "data / vectors": "#ffffff",
    "positive mining": "#fdd49e",
    "loss": "#fcae91",
}  # one fill colour per kind of box


def diagram_box(ax, x: float, y: float, text: str, kind: str, w: float = 1.75, h: float = 0.95) -> None:
    """A rounded box centred at (x, y), filled by what it is (a key of DIAGRAM_COLOURS)."""
    from matplotlib.patches import FancyBboxPatch

    if kind not in DIAGRAM_COLOURS:
        raise HpnbError(f"diagram_box: kind must be one of {list(DIAGRAM_COLOURS)}, found {kind!r}")
    fill = DIAGRAM_COLOURS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=fill, ec="0.3", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5)


def diagram_arrow(ax, start, end, style: str = "-", rad: float = 0.0, label: str = "") -> None:
    """An arrow from start to end (dashed with style="--", dotted ":", curved with rad), labelled at its middle."""
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=11,
            lw=1.1,
            color="0.25",
            linestyle=style,
            connectionstyle=f"arc3,rad={rad}",
        )
    )
    if label:
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(*middle, label, fontsize=7.5, ha="left", va="center", backgroundcolor="white")


def diagram(draw, title: str, size=(12, 4.9), xlim=(0, 14.6), ylim=(0.45, 7.75)):
    """A figure with one blank axes (data coordinates xlim × ylim), `draw(ax)` called on it, and a legend of the
    box kinds below: the frame of a box-and-arrow diagram, so a notebook cell holds only what is drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_axis_off()
    draw(ax)
    handles = [Patch(fc=c, ec="0.3", label=kind) for kind, c in DIAGRAM_COLOURS.items()]
    ax.legend(handles=handles, loc="lower left", ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def ablation_figure(best: dict[str, dict], reference: str | None = None, metric: str = "miou", note: str = ""):
    """Horizontal bars: each ablation's val score minus the reference row's (default: the first), for the cluster
    and the linear head side by side; the reference's own values in the title. `best` maps a row name to a run's
    metrics.json["best"] ({"cluster": {"acc", "miou"}, "linear": {...}})."""
    import matplotlib.pyplot as plt

    reference = reference or next(iter(best))
    if reference not in best:
        raise HpnbError(f"ablation_figure: reference row {reference!r} is not among {list(best)}")
    rows = [name for name in best if name != reference]
    heads = ("cluster", "linear")
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.3), sharey=True)
    word = "mIoU" if metric == "miou" else "Acc"
    for ax, head, colour in zip(axes, heads, ("tab:green", "tab:purple"), strict=True):
        delta = [best[n][head][metric] - best[reference][head][metric] for n in rows]
        bars = ax.barh(range(len(rows)), delta, color=[colour if d >= 0 else "0.6" for d in delta])
        ax.bar_label(bars, labels=[f"{d:+.1f}" if abs(d) >= 0.05 else "0.0" for d in delta], fontsize=8, padding=2)
        ax.axvline(0, color="k", lw=1)
        span = max(1.0, *(abs(d) for d in delta))
        ax.set_xlim(-1.35 * span, 1.35 * span)
        ax.set_xlabel(f"Δ val {word} (points) vs {reference}")
        ax.set_title(f"{head} head: {reference} at {best[reference][head][metric]:.1f} %", fontsize=10)
    axes[0].set_yticks(range(len(rows)), rows)
    axes[0].invert_yaxis()
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig


def table4_delta_figure(
    deltas: dict[str, dict[str, dict[str, tuple[float, float]]]],
    metric: str = "miou",
    paper: dict[str, float] | None = None,
    titles: dict[str, str] | None = None,
):
    """Table 4 as differences against full HP: one panel per protocol, one bar colour per dataset, a bar per row
    (mean ± std over seeds of the per-seed difference). `deltas` is {protocol: {dataset label: {row: (mean, std)}}}
    (`hpnb.report.table4_deltas`); `paper` adds the paper's own differences as markers in protocol "online"."""
    import matplotlib.pyplot as plt

    word = "mIoU" if metric == "miou" else "Acc"
    protocols = list(deltas)
    names = list(dict.fromkeys(n for per in deltas.values() for rows in per.values() for n in rows))
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4.2), sharey=True, squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        per = deltas[protocol]
        width = 0.8 / len(per)
        for k, (label, rows) in enumerate(per.items()):
            xs = [names.index(n) + (k - (len(per) - 1) / 2) * width for n in rows]
            ax.bar(xs, [m for m, _ in rows.values()], width, yerr=[s for _, s in rows.values()], capsize=3, label=label)
        if paper and protocol == "online":
            px = [names.index(n) for n in paper if n in names]
            ax.plot(px, [paper[names[x]] for x in px], "k_", ms=18, mew=2, label="paper (COCO-Stuff, ViT-S/8)")
        ax.axhline(0, color="k", lw=1)
        ax.set_xticks(range(len(names)), [textwrap.fill(n, 16) for n in names], fontsize=8.5)
        ax.set_title((titles or {}).get(protocol, protocol), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"cluster {word}: row − full HP (points)")
    handles = {}  # one legend for the figure: the datasets' bars and, where drawn, the paper's markers
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    labels = sorted(handles, key=lambda label: label.startswith("paper"))  # our datasets first
    fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=len(labels), fontsize=8.5, frameon=False)
    fig.suptitle(
        "Table 4's rows minus full HP (a), per seed, mean ± std over the seeds; below 0: worse than full HP",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# -- small worked examples -----------------------------------------------------------------------------------------


def circle_example(anchors, pool, criteria, masks: dict, names: str = "abcdefgh"):
    """Unit vectors in 2-D: one panel per positive rule (`masks`: title -> bool (n, n), row i = P_i). Each anchor's
    arc {x on the circle : sim(x, anchor) > c_anchor} is drawn in its colour, the pool as squares, and an arrow
    i -> j for every j in P_i, so a one-sided pair shows one arrow and the symmetric rule the missing one."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    anchors, pool = np.asarray(anchors, dtype=np.float64), np.asarray(pool, dtype=np.float64)
    criteria = np.asarray(criteria, dtype=np.float64)
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(masks), figsize=(3.6 * len(masks), 3.7), squeeze=False)
    for ax, (title, mask) in zip(axes[0], masks.items(), strict=True):
        mask = np.asarray(mask, dtype=bool)
        t = np.linspace(0, 2 * np.pi, 361)
        ax.plot(np.cos(t), np.sin(t), color="0.85", lw=1)
        for i, (a, c) in enumerate(zip(anchors, criteria, strict=True)):
            centre, half = np.arctan2(a[1], a[0]), np.arccos(np.clip(c, -1, 1))
            arc = np.linspace(centre - half, centre + half, 60)
            r = 1.0 + 0.07 * (i + 1)
            ax.plot(r * np.cos(arc), r * np.sin(arc), color=colours[i], lw=4, alpha=0.45, solid_capstyle="butt")
            ax.scatter(*a, s=55, color=colours[i], zorder=3)
            ax.annotate(f"{names[i]} (c={c:.2f})", a, xytext=0.62 * a, ha="center", va="center", fontsize=8)
        ax.scatter(*pool.T, marker="s", s=55, color="k", zorder=3, label="pool $Q$")
        for i, j in zip(*np.nonzero(mask), strict=True):
            ax.add_patch(
                FancyArrowPatch(
                    0.9 * anchors[i], 0.9 * anchors[j], arrowstyle="-|>", mutation_scale=13, lw=1.6,
                    color=colours[i], connectionstyle="arc3,rad=0.25",
                )
            )  # fmt: skip
        ax.set_xlim(-1.45, 1.45)
        ax.set_ylim(-1.45, 1.45)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower left", frameon=False)
    fig.text(0.5, 0.01, "arc: where sim(·, anchor) > its c;  arrow i → j: j ∈ P_i", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def gradient_share_figure(window_rgb, share, anchor_name: str = "i", title: str = ""):
    """One anchor's 3×3 window (`window_rgb`, the crop of an image or of its colour-coded labels, 3p × 3p) beside
    a heatmap of the share of the anchor's gradient that reaches each cell (`share`, 9 values, row-major): the
    cells that get none are hatched, the anchor is marked, and the colourbar starts at zero."""
    import matplotlib.pyplot as plt

    share = np.asarray(share, dtype=np.float64).reshape(3, 3)
    window_rgb = np.asarray(window_rgb)
    p = window_rgb.shape[0] / 3
    fig, (ax_img, ax_map) = plt.subplots(1, 2, figsize=(6.6, 3.1), gridspec_kw={"width_ratios": (1, 1.25)})
    ax_img.imshow(window_rgb, extent=(-0.5, 2.5, 2.5, -0.5))
    ax_img.set_title(f"the window ({int(p)}-pixel patches)", fontsize=9)
    im = ax_map.imshow(share, cmap="Greens", vmin=0, vmax=float(share.max()))
    for ax in (ax_img, ax_map):
        for y in range(3):
            for x in range(3):
                got = share[y, x] > 0
                ax.add_patch(
                    plt.Rectangle(
                        (x - 0.5, y - 0.5), 1, 1, fill=False, ec="limegreen" if got else "red", lw=2.5,
                        hatch=None if got or ax is ax_img else "//",
                    )
                )  # fmt: skip
                text = f"{share[y, x]:.2f}" + ("\n(anchor)" if (y, x) == (1, 1) else "")
                ax.text(
                    x, y, text, ha="center", va="center", fontsize=9, color="white" if ax is ax_img else "k",
                    bbox=dict(fc="black", alpha=0.45, lw=0, pad=1) if ax is ax_img else None,
                )  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax_map, fraction=0.046, label=f"share of ∂ s$^{{mix}}_{anchor_name}$ reaching $s_j$")
    ax_map.set_title("green: gets gradient, red hatched: none", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# Your own images (notebook 07): overlays, a colour legend, cluster maps and the patches nearest each centroid
# ----------------------------------------------------------------------------------------------------------


def overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo with its label colours blended in: (1 − α)·image + α·colour[label], uint8 (H, W, 3); pixels with
    label −1 (ignore) keep the photo."""
    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    paint = np.asarray(colours, dtype=np.float32)[labels.clip(0)]
    blend = np.where((labels >= 0)[..., None], (1 - alpha) * image + alpha * paint, image)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def legend_figure(names: list[str], colours: np.ndarray, title: str = "clusters"):
    """A small figure: one colour swatch per cluster with its id and name."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = np.asarray(colours, dtype=np.uint8)
    rows = math.ceil(len(names) / 2)
    fig = plt.figure(figsize=(4.6, 0.35 + 0.28 * rows))
    handles = [Patch(color=colours[k] / 255, label=f"{k}: {n}") for k, n in enumerate(names)]
    fig.legend(handles=handles, loc="center", ncol=2, fontsize=9, frameon=False, title=title)
    return fig


def _legend_layout(label_maps, n_rows: int) -> tuple[list[int], int, float, float]:
    """The clusters shown in `label_maps`, the legend's columns, its height and the figure's height (inches)."""
    shown = sorted({int(k) for lab in label_maps for k in np.unique(lab) if k >= 0})
    legend_cols = min(4, max(1, len(shown)))
    legend_h = 0.3 + 0.22 * math.ceil(len(shown) / legend_cols)
    return shown, legend_cols, legend_h, 2.4 * n_rows + legend_h


def _finish_with_legend(fig, axes, shown, legend_cols, legend_h, height, names, colours) -> None:
    """Axes off, one legend of the clusters shown under the panels, and the layout above it."""
    from matplotlib.patches import Patch

    for ax in axes.flat:
        ax.set_axis_off()
    handles = [Patch(color=colours[k] / 255, label=f"{k}: {names[k]}") for k in shown]
    fig.legend(handles=handles, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))


def compare_overlays(
    images: list[np.ndarray], columns: dict[str, list[np.ndarray]], names: list[str], colours, alpha=0.5
):
    """One row per photo: the photo, then one overlay per labelling in `columns` ({title: label maps}), with one
    legend; the labellings share cluster ids (e.g. `hpnb.predict.raw_kmeans_segmenter` matched to a run)."""
    import matplotlib.pyplot as plt

    colours = np.asarray(colours, dtype=np.uint8)
    layout = _legend_layout([lab for labs in columns.values() for lab in labs], len(images))
    height = layout[3]
    fig, axes = plt.subplots(len(images), 1 + len(columns), figsize=(3 * (1 + len(columns)), height), squeeze=False)
    for r, image in enumerate(images):
        axes[r, 0].imshow(image)
        for c, labs in enumerate(columns.values(), start=1):
            axes[r, c].imshow(overlay(image, labs[r], colours, alpha))
    for c, title in enumerate(("photo", *columns)):
        axes[0, c].set_title(title, fontsize=9)
    _finish_with_legend(fig, axes, *layout, names, colours)
    return fig


def cluster_overlays(
    images: list[np.ndarray], labels: list[np.ndarray], names: list[str], colours, alpha=0.5, titles=None
):
    """One row per image: the photo, its cluster map and the photo overlaid, with a legend of the clusters shown."""
    import matplotlib.pyplot as plt

    colours = np.asarray(colours, dtype=np.uint8)
    layout = _legend_layout(labels, len(images))
    fig, axes = plt.subplots(len(images), 3, figsize=(9, layout[3]), squeeze=False)
    for r, (image, lab) in enumerate(zip(images, labels, strict=True)):
        axes[r, 0].imshow(image)
        axes[r, 1].imshow(colorize(lab, colours), interpolation="nearest")
        axes[r, 2].imshow(overlay(image, lab, colours, alpha))
        if titles is not None:
            axes[r, 0].set_title(titles[r], fontsize=8)
    for c, title in enumerate(("photo", "clusters", f"overlay (α = {alpha})")):
        axes[0, c].set_title(title if titles is None or c else f"photo: {titles[0]}", fontsize=9)
    _finish_with_legend(fig, axes, *layout, names, colours)
    return fig


def cluster_strips(
    strips: list[np.ndarray], names: list[str], colours, shares: list[float] | None = None, cell: float = 0.75
):
    """One row per cluster: its colour and name (with its share of the patches), then the crops around the patches
    nearest its centroid, nearest first. `strips[k]` is (n, s, s, 3) uint8; `cell` is the side of one crop in inches."""
    import matplotlib.pyplot as plt

    colours = np.asarray(colours, dtype=np.uint8)
    n = max((len(s) for s in strips), default=1)
    size = (cell * (n + 1) + 1.4, cell * len(strips) + 0.4)
    fig, axes = plt.subplots(len(strips), n + 1, figsize=size, squeeze=False)
    for k, crops in enumerate(strips):
        axes[k, 0].imshow(np.broadcast_to(colours[k], (8, 8, 3)))
        label = f"{k}: {names[k]}" + (f"\n{100 * shares[k]:.0f} % of patches" if shares is not None else "")
        axes[k, 0].text(-0.15, 0.5, label, transform=axes[k, 0].transAxes, ha="right", va="center", fontsize=8)
        for j in range(n):
            if j < len(crops):
                axes[k, j + 1].imshow(crops[j])
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(
        "patches nearest each cluster centroid (nearest first; the patch in the middle of each crop)", fontsize=9
    )
    fig.tight_layout(rect=(1.4 / size[0], 0, 1, 0.97))
    return fig


def held_out_selection(rows: list[dict], kept_step: int | None):
    """The label-free model selection of a folder run: the held-out HP loss at each validation (`rows`: the log's
    rows that have "val"), as the mean over its draws of the reference pools and R with their spread (± one std over
    the draws), and the kept step starred. The draws are the same at every step, so the title also counts the draws
    in which the kept step has the lowest loss: the paired view of the same numbers. The axis is not cut at 0: the
    title says how large the differences are against the loss itself."""
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    means = np.array([r["val"]["held_out_loss"] for r in rows])
    stds = np.array([r["val"].get("held_out_loss_std", np.nan) for r in rows])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    has_spread = bool(np.isfinite(stds).any())
    label = f"mean over {HELD_OUT_DRAWS} draws of the pools and R, ± 1 std" if has_spread else "held-out loss"
    ax.errorbar(steps, means, yerr=stds if has_spread else None, fmt="o-", capsize=4, label=label)
    title = "label-free model selection"
    if kept_step in steps:
        k = steps.index(kept_step)
        ax.plot(kept_step, means[k], "*", ms=16, color="tab:red", mec="k", label=f"checkpoint kept (step {kept_step})")
        draws = np.array([r["val"].get("held_out_draws", []) for r in rows], dtype=float)
        if draws.ndim == 2 and draws.shape[1] > 0:
            wins = int((draws.argmin(0) == k).sum())
            title += f": step {kept_step} is lowest in {wins} of {draws.shape[1]} draws"
    span = means.max() - means.min()
    title += f"\n(axis not from 0: the steps differ by at most {span:.2f} of {means.mean():.1f}, {100 * span / means.mean():.1f} %)"
    ax.set_title(title, fontsize=9.5)
    ax.set_xlabel("iteration t")
    ax.set_ylabel("held-out HP loss")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
