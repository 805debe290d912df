"""The notebooks in a real browser: JupyterLab from the project's venv, headless Chromium driven by Playwright (the
system's Chromium; Playwright downloads no browser). For each notebook with widgets: run all cells, check that no
cell shows an error, that the widgets render, and that moving each slider with the keyboard changes the figure or
table under it. Results (cells run, errors, widgets, sliders that changed their output, wall time) go to
build/browser_test.json.

    make browser-test                      # every notebook with widgets
    pytest -m browser tests/test_browser.py

Needs Chromium (Debian/Ubuntu: `sudo apt-get install chromium`) and the pinned `playwright` package (requirements.txt,
the `dev` extra); without them the test is skipped with one line that says so. The notebooks run from a temporary
copy, so JupyterLab's autosave never touches the committed outputs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from notebook_session import wait_until_nbval_ran

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "hpnb-browser-test"
RESULTS = ROOT / "build" / "browser_test.json"
INSTALL = (
    "browser test skipped: it needs Chromium and Playwright (Debian/Ubuntu: sudo apt-get install chromium; "
    "Playwright is pinned in requirements.txt: .venv/bin/pip install -r requirements.txt)"
)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [pytest.mark.browser, pytest.mark.after_notebooks]


def widget_notebooks() -> list[str]:
    """Notebooks that display a widget (an hpnb explorer or ipywidgets directly)."""
    out = []
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        if "hpnb.widgets.explore_" in code or "import ipywidgets" in code:
            out.append(path.name)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a temporary copy of notebooks/, with the app exposed to the page's scripts."""
    folder = tmp_path_factory.mktemp("lab")
    for path in (ROOT / "notebooks").glob("0*.ipynb"):  # without outputs: a cell with a count then ran here
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (folder / path.name).write_text(json.dumps(nb))
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            f"--IdentityProvider.token={TOKEN}",
            "--allow-root",  # containers and CI often run as root
            f"--ServerApp.root_dir={folder}",
            "--LabApp.expose_app_in_browser=True",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail("JupyterLab did not start within 60 s")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    # skipped here, not for the whole module: `-m after_notebooks` then still collects the tests (pytest's exit 5 for
    # "nothing collected" would fail make test), and -rs folds the identical skips into one line
    if CHROMIUM is None or sync_playwright is None:
        pytest.skip(INSTALL)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


# JavaScript run in the page: the current notebook panel of the exposed JupyterLab app
_PANEL = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
_KERNEL_IDLE = f"""() => {{
  const w = {_PANEL};
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}}"""
_NONE_RUN = f"""() => {{
  const w = {_PANEL};
  return !!w && w.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount === null);
}}"""
_ALL_RUN = f"""() => {{
  const w = {_PANEL};
  if (!w || !w.content) return false;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const busy = code.some(c => (c.node.querySelector('.jp-InputArea-prompt') || {{}}).textContent?.includes('*'));
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  // Run All stops at a cell that raises: then the rest never runs, and the summary names the error
  const failed = code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
  return !busy && !!k && k.status === 'idle' && (failed || code.every(c => c.model.executionCount !== null));
}}"""
_SUMMARY = f"""() => {{
  const w = {_PANEL};
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const errors = code.filter(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'))
    .map(c => c.model.sharedModel.getSource().slice(0, 60));
  return {{cells: code.length, run: code.filter(c => c.model.executionCount !== null).length, errors}};
}}"""
# what a slider drives: the figures, images and text of the widget box that holds it (not the slider's own readout)
_VIEW_OF = """(slider) => {
  const box = slider.closest('.widget-vbox') || slider.closest('.jp-OutputArea');
  const parts = [...box.querySelectorAll('.widget-output, img.widget-image')];
  const text = parts.map(e => e.tagName === 'IMG' ? e.src : e.innerHTML).join('|');
  let hash = 5381;  // a short fingerprint (djb2) instead of the whole picture
  for (let i = 0; i < text.length; i++) hash = ((hash * 33) ^ text.charCodeAt(i)) >>> 0;
  return `${text.length}:${hash}`;
}"""


def _run_notebook(browser, lab: str, name: str) -> dict:
    waited = wait_until_nbval_ran(name)  # `make test` runs this beside nbval: the notebook's caches must be warm
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    start = time.perf_counter()
    # a fresh workspace per notebook: JupyterLab would otherwise reopen the notebooks of earlier tests beside it
    page.goto(f"{lab}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_function(_KERNEL_IDLE, timeout=120_000)
    page.wait_for_function(_NONE_RUN, timeout=30_000)  # the copy has no outputs: a count means the cell ran here
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_RUN, timeout=900_000, polling=1_000)
    summary = page.evaluate(_SUMMARY)
    sliders = page.locator(".jp-OutputArea .widget-slider")
    widgets = page.locator(".jp-OutputArea .jupyter-widgets").count()
    changed, tried = [], sliders.count()
    for k in range(tried):
        slider = sliders.nth(k)
        slider.scroll_into_view_if_needed()
        label = (slider.locator(".widget-label").first.text_content() or "").strip() or f"slider {k}"
        before = slider.evaluate(_VIEW_OF)
        handle = slider.locator(".noUi-handle").first
        handle.focus()  # one step right, or left when the slider already stands at its maximum
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")
        try:  # the kernel recomputes and redraws: wait until the view under the slider is different
            page.wait_for_function(
                f"(el) => ({_VIEW_OF})(el) !== {json.dumps(before)}",
                arg=slider.element_handle(),
                timeout=60_000,
                polling=250,
            )
            changed.append(label)
        except Exception:  # noqa: BLE001  (reported below, the assertion names the slider)
            pass
    page.close()
    return {
        "cells": summary["cells"],
        "cells_run": summary["run"],
        "errors": summary["errors"],
        "widgets_rendered": widgets,
        "sliders": tried,
        "sliders_that_changed_the_output": changed,
        "wall_s": round(time.perf_counter() - start, 1),
        "waited_for_nbval_s": round(waited, 1),
    }


@pytest.mark.parametrize("name", widget_notebooks())
def test_notebook_runs_in_a_real_browser_and_its_sliders_redraw(browser, lab, name):
    result = _run_notebook(browser, lab, name)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    record[name] = result
    RESULTS.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    assert result["cells_run"] == result["cells"], result
    assert not result["errors"], f"cells with an error: {result['errors']}"
    assert result["widgets_rendered"] > 0 and result["sliders"] > 0, result
    assert len(result["sliders_that_changed_the_output"]) == result["sliders"], result
