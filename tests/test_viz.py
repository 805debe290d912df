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
    np.testing.assert_allclose(shown, column_normalize(CONF), equal_nan=True)
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
