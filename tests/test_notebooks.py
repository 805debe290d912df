"""The notebook series: the README's list matches the files, every notebook is clean and small, widgets react."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _readme_list() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`notebooks/(\d\d_[a-z0-9_]+\.ipynb)`", section)


def test_readme_lists_exactly_the_notebooks_in_order():
    assert _readme_list() == [p.name for p in NOTEBOOKS]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in NOTEBOOKS)


def test_notebooks_are_clean_and_small():
    if not NOTEBOOKS:
        pytest.skip("no notebooks yet")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "clean_notebooks.py"), "--check", *map(str, NOTEBOOKS)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout
    for path in NOTEBOOKS:
        assert path.stat().st_size <= 2 * 1024 * 1024, f"{path.name} is over 2 MB"


def _image_kinds(notebook: str, call: str) -> list[str]:
    """The image types committed by the cells of `notebook` whose source contains `call`."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
    return [
        kind
        for cell in cells
        if cell["cell_type"] == "code" and call in "".join(cell["source"])
        for out in cell["outputs"]
        for kind in out.get("data", {})
        if kind.startswith("image/")
    ]


def test_photo_panels_are_committed_as_jpeg_and_plots_as_png():
    """hpnb.viz.inline_figures (each notebook's first cell) sends a panel of photos as JPEG and a plot as PNG: this is
    what keeps the 150 dpi notebooks under 2 MB. A notebook run where the formatters did not take gives PNG only."""
    for path in NOTEBOOKS:
        assert "hpnb.viz.inline_figures()" in "".join(json.loads(path.read_text())["cells"][1]["source"]), path.name
    assert _image_kinds("02_global_hidden_positives.ipynb", 'fig5(*fig5_data("toy"))') == ["image/jpeg"]
    assert _image_kinds("04_training.ipynb", "hpnb.viz.training_log(") == ["image/png"]


def test_no_notebook_ignores_all_outputs_or_prints_progress_bars():
    for path in NOTEBOOKS:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        ignored = [c for c in cells if "nbval-ignore-output" in c.get("metadata", {}).get("tags", [])]
        assert len(ignored) < len(cells) / 2, f"{path.name}: most cells ignore their output"
        for cell in cells:
            for out in cell.get("outputs", []):
                if out.get("name") == "stderr":
                    assert "it/s" not in "".join(out.get("text", "")), f"{path.name}: a progress bar in the outputs"


def _toy_features():
    import torch

    from hpnb.backbones import load_backbone
    from hpnb.features import extract_features
    from hpnb.toyworld import ToyWorld

    torch.manual_seed(0)
    return extract_features(load_backbone(weights="random"), ToyWorld("val", n=40, res=56), progress=False)


def test_pool_size_widget_recomputes_when_the_slider_moves(tmp_cache):
    from hpnb.widgets import explore_pool_size

    exp = explore_pool_size(_toy_features(), values=(4, 8, 32, 64), n_images=8)
    assert exp.widget.children[0].options == (4, 8, 32)  # M = 64 > the 32 non-anchor images is left out
    first = dict(exp.last)
    exp.widget.children[0].value = 32  # what a user's slider move does
    assert exp.last["M"] == 32 and exp.last != first
    assert exp.last["mean_positives"] < first["mean_positives"]  # a larger pool raises c_i: fewer positives
    assert exp.widget.children[0].continuous_update is False
    assert len(exp.seconds) == 2 and exp.picture is not None  # each move redraws a figure
    before = exp.picture
    exp.widget.children[0].value = 4
    assert exp.picture.shape == before.shape and (exp.picture != before).any(), "moving M must change the picture"
    assert [len(e["positives"]) for e in exp.last["examples"]] != [len(e["positives"]) for e in first["examples"]]


def test_temperature_widget_recomputes_when_the_sliders_move(tmp_cache):
    import torch

    from hpnb.widgets import explore_temperature

    exp = explore_temperature(_toy_features(), n_images=8)
    base = dict(exp.last)
    exp.widget.children[0].value = 0.2  # τ
    assert exp.last["tau"] == 0.2 and exp.last["mass_on_positives"] > base["mass_on_positives"]
    pic = exp.picture
    exp.widget.children[1].value = 0.5  # ρ
    assert exp.last["denominator_size"] > base["denominator_size"]
    assert (exp.picture != pic).any(), "moving ρ must change the picture"
    one = exp.last["anchor"]  # the anchor's softmax: sorted weights summing to 1, the positives' share among them
    assert torch.all(one["weights"][:-1] >= one["weights"][1:]) and abs(float(one["weights"].sum()) - 1) < 1e-9
    assert abs(one["mass_on_positives"] - float(one["weights"][one["positive"]].sum())) < 1e-9


# what a cell calls when it loads CamVid images (a figure of numbers from results/camvid/ shows no pixels)
_IMAGE_CALLS = ("get_dataset", "hpnb.data.camvid", "data_root(", "extract_features", "fig5", "label_grid", "imshow")


def _reads_camvid_images(source: str) -> bool:
    return "camvid" in source.lower() and any(call in source.lower() for call in _IMAGE_CALLS)


def test_the_camvid_check_tells_images_from_numbers():
    assert _reads_camvid_images('fs = hpnb.data.get_dataset("camvid", "val", root)\nplt.imshow(fs[0]["image"])')
    assert _reads_camvid_images('fig5(*fig5_data("camvid"))')
    assert not _reads_camvid_images('ax.bar(x, means, label="ours: CamVid, 3 seeds")')


def test_no_camvid_pixels_are_committed():
    """CamVid is CC BY-NC, not the project's licence: its figures render live only, in `live-only` cells whose
    outputs are stripped before a commit (and are not compared by nbval); no other cell that reads CamVid shows images."""
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            tags = cell.get("metadata", {}).get("tags", [])
            images = [o for o in cell.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {}))]
            if "live-only" in tags:
                assert not cell["outputs"], f"{path.name}: a live-only cell has committed outputs"
                assert "nbval-ignore-output" in tags, f"{path.name}: a live-only cell must be nbval-ignore-output"
            elif _reads_camvid_images("".join(cell["source"])) and images:
                raise AssertionError(f"{path.name}: a cell that reads CamVid commits a figure; tag it live-only")


def test_cleaning_strips_live_only_outputs():
    sys.path.insert(0, str(ROOT / "tools"))
    from clean_notebooks import clean

    nb = {
        "nbformat": 4,
        "nbformat_minor": 4,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": ["live-only", "nbval-ignore-output"]},
                "execution_count": 3,
                "source": "show_camvid()",
                "outputs": [{"output_type": "display_data", "data": {"image/png": "AAAA"}}],
            },
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 4,
                "source": "1",
                "outputs": [{"output_type": "stream"}],
            },
        ],
    }
    cleaned = clean(nb)
    assert cleaned["cells"][0]["outputs"] == [] and cleaned["cells"][0]["execution_count"] is None
    assert cleaned["cells"][1]["outputs"] == [{"output_type": "stream"}]


def _markdown(path: Path) -> str:
    return "\n".join(
        "".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"
    )


def test_every_notebook_links_the_paper_the_code_the_deviations_and_the_glossary():
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        text = _markdown(path)
        for target in ("arxiv.org/abs/2303.15014", "github.com/hynnsk/HP", "../docs/deviations.md", "#Glossary:"):
            assert target in text, f"{path.name}: no link to {target}"


def test_no_internal_link_of_the_notebooks_is_broken():
    """Every relative link in a notebook's markdown names a file that exists; a link to a notebook heading names a
    heading of that notebook (JupyterLab's anchor: the heading with spaces as '-')."""
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        for target in re.findall(r"\]\(([^)\s]+)\)", _markdown(path)):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file) if file else path
            assert resolved.exists(), f"{path.name}: broken link {target}"
            if anchor and resolved.suffix == ".ipynb":
                headings = [h.strip().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", _markdown(resolved), re.M)]
                assert anchor in headings, f"{path.name}: {target} names no heading of {resolved.name}"


def test_notebook_00_shows_the_14_differences_as_docs_deviations_lists_them():
    dev = (ROOT / "docs" / "deviations.md").read_text()
    section = dev[dev.index("## 1. The official code against the paper") : dev.index("## 2. ")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    text = _markdown(ROOT / "notebooks" / "00_setup_and_tour.ipynb")
    assert len(rows) == 14 and all(row in text for row in rows), "copy docs/deviations.md's first table into 00"


def test_the_ten_line_recap_points_to_every_notebook_it_teaches_from():
    text = _markdown(ROOT / "notebooks" / "00_setup_and_tour.ipynb")
    recap = text[text.index("## HP in ten lines") :].split("\n## ", 1)[0]
    assert len(re.findall(r"^\d+\. ", recap, re.M)) == 10
    for stem in ("01_preliminaries", "02_global", "03_local", "04_training", "05_evaluation", "06_ablations"):
        assert stem in recap, stem


def _try_it_prompts(path: Path) -> int:
    """The numbered prompts of a notebook's "Try it yourself" section."""
    text = _markdown(path)
    section = text.split("## Try it yourself", 1)[1].split("\n## ", 1)[0]
    return len(re.findall(r"^\d+\. ", section, flags=re.M))


def test_the_guide_says_what_each_try_it_prompt_shows():
    """docs/workshop.md's facilitator notes give, per notebook, one expected observation for each Try-it prompt: a
    prompt added to a notebook without its note fails here."""
    guide = (ROOT / "docs" / "workshop.md").read_text()
    notes = guide.split("### Try it yourself: what participants should see", 1)[1].split("\n### ", 1)[0]
    for path in NOTEBOOKS:
        block = notes.split(f"**{path.stem[:2]} ", 1)[1].split("\n\n", 1)[0]
        bullets = len(re.findall(r"^- \*", block, flags=re.M))
        assert bullets == _try_it_prompts(path) > 0, f"{path.name}: {bullets} notes for {_try_it_prompts(path)} prompts"
