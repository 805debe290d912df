"""Figures and tables: the confusion heatmap shows the column-normalised matrix, the IoU table is exact Markdown,
and the label grid keeps its legend clear of the images."""

import math

import numpy as np
import pytest

from hpnb import HpnbError
from hpnb.viz import column_normalize, confusion_figure, iou_table, label_grid, palette, use_headless_backend

use_headless_backend()
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


CONF = np.array(
    [
        [8, 1, 0],  # rows = predicted, cols = ground truth (hpnb.metrics)
        [2, 3, 0],
        [0, 4, 0],
    ]
)  # no pixel of class "c": an empty column
CLASSES = ["a", "b", "c"]


def test_column_normalize_by_ground_truth():
    norm = column_normalize(CONF)
    np.testing.assert_allclose(norm[:, :2], [[0.8, 0.125], [0.2, 0.375], [0.0, 0.5]])
    assert np.isnan(norm[:, 2]).all()


def test_confusion_figure_shows_the_normalised_matrix_with_class_names():
    fig = confusion_figure(CONF, CLASSES, title="toy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_xlabel() == "ground truth" and ax.get_ylabel() == "predicted" and ax.get_title() == "toy"
    shown = np.ma.filled(ax.collections[0].get_array().astype(float), np.nan).reshape(3, 3)
    np.testing.assert_allclose(shown, 100 * column_normalize(CONF), equal_nan=True)  # % of each ground-truth class
    assert fig.axes[1].get_ylabel() == "% of the ground-truth class (diagonal: recall)"  # the colourbar says what
    assert fig.get_size_inches()[0] <= 6


def test_confusion_figure_raw_counts_and_size():
    fig = confusion_figure(CONF, CLASSES, normalize=False)
    shown = np.asarray(fig.axes[0].collections[0].get_array()).reshape(3, 3)
    np.testing.assert_array_equal(shown, CONF)
    widths = [confusion_figure(np.eye(n), [str(i) for i in range(n)]).get_size_inches()[0] for n in (12, 27)]
    assert widths[0] <= 6 < widths[1] <= 10


def test_confusion_figure_rejects_a_wrong_shape():
    with pytest.raises(HpnbError, match=r"expects a \(2, 2\) matrix"):
        confusion_figure(CONF, ["a", "b"])


def test_iou_table_exact_markdown():
    table = iou_table({"k-means": [12.345, math.nan], "HP cluster": [50.0, 20.06]}, ["sky", "road"])
    assert table == (
        "| class | k-means | HP cluster |\n"
        "|---|---:|---:|\n"
        "| sky | 12.3 | 50.0 |\n"
        "| road | – | 20.1 |\n"
        "| mean | 12.3 | 35.0 |\n"
    )


def test_iou_table_all_nan_column_and_length_check():
    assert iou_table({"m": [math.nan]}, ["x"]).endswith("| mean | – |\n")
    with pytest.raises(HpnbError, match="has 1 values for 2 classes"):
        iou_table({"m": [1.0]}, ["x", "y"])


@pytest.mark.parametrize("rows, n_classes", [(4, 8), (1, 27)])
def test_label_grid_titles_and_legend_below_the_images(rows, n_classes):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (rows, 16, 16, 3), dtype=np.uint8)
    gt = g.integers(-1, n_classes, (rows, 16, 16))
    columns = {"ground truth": gt, "cluster": gt, "linear": gt, "+CRF": gt}
    fig = label_grid(images, columns, [f"class {i}" for i in range(n_classes)], palette(n_classes))
    axes = np.array(fig.axes).reshape(rows, 5)
    assert [ax.get_title() for ax in axes[0]] == ["image", "ground truth", "cluster", "linear", "+CRF"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0]
    assert len(legend.get_texts()) == n_classes
    lowest_image = min(ax.get_window_extent(renderer).y0 for ax in axes[-1])
    assert legend.get_window_extent(renderer).y1 <= lowest_image


# -- the figures re-made for the workshop (issue 12) ---------------------------------------------------------------


def _log(steps=12, val_every=4):
    rows = []
    for t in range(1, steps + 1):
        row = dict(step=t, loss=3 - 0.1 * t, phi=2 - 0.05 * t, psi=1 - 0.05 * t, reg=0.1, lam=max(0.0, (t - 2) / 10))
        if t % val_every == 0:
            row["val"] = {"cluster": {"miou": 10 + t, "acc": 40}, "linear": {"miou": 30 - t, "acc": 50}}
        rows.append(row)
    return rows


def test_diagram_draws_the_boxes_and_a_legend_of_every_kind():
    from hpnb.viz import DIAGRAM_COLOURS, diagram, diagram_arrow, diagram_box

    def draw(ax):
        diagram_box(ax, 2, 2, "head $S$", "trained")
        diagram_arrow(ax, (0, 0), (2, 2), style="--", label="EMA")

    fig = diagram(draw, "a title")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(DIAGRAM_COLOURS)
    assert {t.get_text() for t in ax.texts} == {"head $S$", "EMA"} and ax.get_title() == "a title"
    with pytest.raises(HpnbError, match="kind must be one of"):
        diagram_box(ax, 0, 0, "x", "learned")


def test_training_log_marks_the_kept_checkpoint_and_shades_the_warm_up():
    from hpnb.viz import training_log

    def marks(fig):
        """(stars on the validation panel, x of the dashed kept-checkpoint line on each of the three panels)."""
        ax, ax_reg, ax_val = fig.axes[:3]
        stars = sorted(
            (float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in ax_val.lines if s.get_marker() == "*"
        )
        dashed = [
            [float(ln.get_xdata()[0]) for ln in a.lines if ln.get_linestyle() == "--" and len(ln.get_xdata())]
            for a in (ax, ax_reg, ax_val)
        ]
        return stars, dashed

    fig = training_log(_log(), alpha=0.05)
    ax, ax_reg, ax_val, ax_lam = fig.axes
    assert ax.get_xlabel() == "iteration t" and ax_val.get_ylabel() == "val mIoU (%)"
    assert "α = 0.05" in ax_reg.get_title()
    # the trainer's rule: the first validation step with the highest Acc + mIoU sum (all tie in _log: t = 4),
    # marked on both heads' curves, not each head's own best
    assert marks(fig) == ([(4.0, 14.0), (4.0, 26.0)], [[4.0], [4.0], [4.0]])
    assert "kept checkpoint (step 4)" in [t.get_text() for t in ax_val.get_legend().get_texts()]
    (span,) = ax.patches  # the warm-up: λ = 0 up to t = 2 in _log
    assert (span.get_x(), span.get_width()) == (0, 2)
    scored = _log()
    for row in scored:
        if "val" in row:
            row["val"]["score"] = -abs(row["step"] - 8)  # the logged score wins over the sum
    assert marks(training_log(scored))[0] == [(8.0, 18.0), (8.0, 22.0)]
    assert marks(training_log(_log(), kept_step=12)) == ([(12.0, 18.0), (12.0, 22.0)], [[12.0], [12.0], [12.0]])
    with pytest.raises(HpnbError, match="no logged steps"):
        training_log([])


def test_ablation_figure_draws_each_row_minus_the_reference():
    from hpnb.viz import ablation_figure

    best = {
        "(a) full": {"cluster": {"miou": 20.0, "acc": 50.0}, "linear": {"miou": 30.0, "acc": 60.0}},
        "(b) no LHP": {"cluster": {"miou": 22.5, "acc": 49.0}, "linear": {"miou": 28.0, "acc": 58.0}},
        "(c) no SP": {"cluster": {"miou": 19.0, "acc": 51.0}, "linear": {"miou": 30.0, "acc": 61.0}},
    }
    fig = ablation_figure(best)
    widths = [[round(b.get_width(), 6) for b in ax.patches] for ax in fig.axes]
    assert widths == [[2.5, -1.0], [-2.0, 0.0]]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["(b) no LHP", "(c) no SP"]
    with pytest.raises(HpnbError, match="reference row"):
        ablation_figure(best, reference="(z)")


def test_circle_example_draws_one_arrow_per_positive_pair():
    import torch

    from hpnb.viz import circle_example

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    one = torch.tensor([[0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    fig = circle_example(x, x[:1], torch.tensor([0.9, 0.5, 0.1]), {"one": one, "both": one | one.T})
    assert [len(ax.patches) for ax in fig.axes] == [1, 2]


def test_gradient_share_figure_hatches_exactly_the_cells_without_gradient():
    from hpnb.viz import gradient_share_figure

    share = [0.3, 0.2, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    fig = gradient_share_figure(np.zeros((42, 42, 3), np.uint8), share)
    heat = fig.axes[1]
    assert sum(bool(p.get_hatch()) for p in heat.patches) == 6
    assert heat.images[0].get_clim() == (0.0, 0.5)  # the colour scale starts at zero


def test_plot_log_saves_the_training_log_figure(tmp_path):
    import json

    from hpnb.train import plot_log

    assert plot_log(tmp_path) is None  # nothing logged yet
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log()))
    assert plot_log(tmp_path, alpha=0.05) == tmp_path / "loss.png" and (tmp_path / "loss.png").stat().st_size > 0


def test_progress_bar_in_a_notebook_displays_the_widget_alone(monkeypatch):
    import IPython.display

    import hpnb.utils

    shown = []
    monkeypatch.setattr(hpnb.utils, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    bar = hpnb.utils.progress_bar(total=3, desc="train")
    bar.update(3)
    bar.close()
    assert len(shown) == 1 and shown[0][1] is True
    assert list(shown[0][0]) == [hpnb.utils.WIDGET_VIEW]  # no text/plain: nbval compares none of it
    assert shown[0][0][hpnb.utils.WIDGET_VIEW]["model_id"] == bar.container.model_id
    monkeypatch.setattr(hpnb.utils, "in_notebook", lambda: False)
    assert type(hpnb.utils.progress_bar(total=1, disable=True)).__module__ == "tqdm.std"


def test_inline_figures_send_plots_as_png_and_photo_panels_as_a_smaller_jpeg():
    from IPython.core.interactiveshell import InteractiveShell

    from hpnb.viz import FIGURE_DPI, inline_figures

    shell, dpi_before = InteractiveShell.instance(), plt.rcParams["figure.dpi"]
    try:
        inline_figures()
        assert plt.rcParams["figure.dpi"] == FIGURE_DPI == 150
        plot, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [1, 0, 2])
        photo, ax = plt.subplots(figsize=(8, 6))
        ax.imshow(np.random.default_rng(0).random((300, 400, 3)))
        sent = {name: shell.display_formatter.format(fig)[0] for name, fig in [("plot", plot), ("photo", photo)]}
        assert "image/png" in sent["plot"] and "image/jpeg" not in sent["plot"]
        assert "image/jpeg" in sent["photo"] and "image/png" not in sent["photo"]
        assert sent["photo"]["image/jpeg"][:3] == b"\xff\xd8\xff"  # JPEG's magic bytes
        # the same figure drawn again after a change (a widget's redraw) is rendered again, not served from a cache
        photo.axes[0].imshow(np.zeros((300, 400, 3)))
        again = shell.display_formatter.format(photo)[0]
        assert "image/png" in again and "image/jpeg" not in again  # a flat image compresses well as PNG
    finally:
        plt.close("all")
        plt.rcParams["figure.dpi"] = dpi_before
        InteractiveShell.clear_instance()


def test_table4_delta_figure_names_each_row_and_has_one_legend_with_the_papers_markers():
    from hpnb.viz import table4_delta_figure

    rows = {"(b) no LHP": (-1.0, 0.5), "(g) plain Eq. 1": (2.0, 1.0), "raw features": (-3.0, 0.2)}
    deltas = {p: {"toy (3 seeds)": rows, "CamVid (3 seeds)": rows} for p in ("online", "converged")}
    fig = table4_delta_figure(deltas, paper={"(b) no LHP": -1.5, "(g) plain Eq. 1": -14.2})
    try:
        ticks = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
        assert ticks == list(rows)  # the rows' names, not only "(b)"
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [
            "toy (3 seeds)",
            "CamVid (3 seeds)",
            "paper (COCO-Stuff, ViT-S/8)",
        ]
        assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, for both panels
    finally:
        plt.close(fig)


def test_held_out_selection_shows_the_spread_and_counts_the_draws_where_the_kept_step_is_lowest():
    from hpnb.viz import held_out_selection

    draws = {
        8: [5.0, 5.2, 5.1],
        16: [4.9, 5.3, 5.0],
        24: [4.8, 5.1, 5.2],
    }  # step 24: lowest mean, lowest in draws 0 and 1
    rows = [
        {"step": s, "val": {"held_out_loss": np.mean(d), "held_out_loss_std": np.std(d, ddof=1), "held_out_draws": d}}
        for s, d in draws.items()
    ]
    fig = held_out_selection(rows, kept_step=24)
    try:
        title = fig.axes[0].get_title()
        assert "step 24 is lowest in 2 of 3 draws" in title and "axis not from 0" in title
        bars = [c for c in fig.axes[0].containers if hasattr(c, "has_yerr")]
        assert bars and bars[0].has_yerr  # the spread over the draws is drawn
    finally:
        plt.close(fig)
    old = [
        {"step": 8, "val": {"held_out_loss": 5.0}},
        {"step": 16, "val": {"held_out_loss": 4.0}},
    ]  # an older run's log
    fig = held_out_selection(old, kept_step=16)
    assert "draws" not in fig.axes[0].get_title()
    plt.close(fig)
