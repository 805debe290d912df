"""The notebooks in a real browser: JupyterLab from the project's venv, headless Chromium driven by Playwright (the
system's Chromium; Playwright downloads no browser). For each notebook with widgets: run all cells, check that no
cell shows an error, that the widgets render, and that moving each slider with the keyboard changes the figure or
table under it. Results (cells run, errors, widgets, sliders that changed their output, wall time) go to
build/browser_test.json.

The static site (`make book`) too, served from build/book/html on a local port with every request off this machine
refused: each page loads (HTTP 200, no console error), each link to the site names a page and an id that exist, each
image decodes, MathJax renders every formula (no TeX left as text) from the site's own copy, and no request leaves the
machine. Results go to build/book_check.json.

    make browser-test                      # every notebook with widgets, and the book
    pytest -m browser tests/test_browser.py

Needs Chromium (Debian/Ubuntu: `sudo apt-get install chromium`) and the pinned `playwright` package (requirements.txt,
the `dev` extra); without them the test is skipped with one line that says so. The notebooks run from a temporary
copy, so JupyterLab's autosave never touches the committed outputs.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
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


# ---- the static site (make book): every page in Chromium, offline -------------------------------------------------
# `make test` builds the book (tools/book.py) right before this run; run alone, the test builds it first when it is
# missing, failed or older than a source (book.is_stale). It needs no notebook cache and waits for no nbval.

BOOK_RESULTS = ROOT / "build" / "book_check.json"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _book_tool():
    """tools/book.py, imported: the site's sources, its staleness rule and its build."""
    sys.path.insert(0, str(ROOT / "tools"))
    import book

    return book


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site without a log line per request; answers Chromium's own /favicon.ico request with 204
    (the site has no favicon, and Chromium asks for one on every page: a 404 would read as a broken resource)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def book_site():
    """The built site served on a free local port: (base URL, html folder, seconds spent building it here or 0)."""
    book = _book_tool()
    build_s = 0.0
    if book.is_stale():
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "book.py"), "-q"], capture_output=True, text=True, timeout=900
        )
        build_s = time.perf_counter() - start
        assert done.returncode == 0, f"make book failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    handler = functools.partial(_QuietHandler, directory=str(book.HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", book.HTML, build_s
    server.shutdown()
    server.server_close()


# JavaScript run in each page once it has loaded: its ids, its links (resolved), its images, its math
_PAGE_FACTS = """() => ({
  ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat(
    [...document.querySelectorAll('a[name]')].map(e => e.name)),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  images: [...document.images].map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth})),
  math: document.querySelectorAll('span.math, div.math').length,
})"""
_MATH_READY = "() => !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"
# after MathJax's first typeset: what it rendered, what it could not parse, what it left as TeX
_MATH_RESULT = """async () => {
  await MathJax.startup.promise;
  const math = [...document.querySelectorAll('span.math, div.math')];
  return {
    containers: document.querySelectorAll('mjx-container').length,
    unrendered: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60)),
    errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60)),
  };
}"""
# TeX left in the text outside code, on any page: a `$` formula that the Markdown parser did not turn into math
_RAW_TEX = """() => {
  const skip = 'pre, code, script, style, mjx-container, .math, .highlight';
  const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.parentElement.closest(skip) && /\\$\\$|\\$\\\\[A-Za-z]|\\$[A-Za-z]\\$/.test(n.textContent))
      raw.push(n.textContent.trim().slice(0, 80));
  }
  return raw;
}"""


def _visit(page, url: str) -> dict:
    """Open one page of the site; its HTTP status, its facts, TeX left as text and, when it has math, MathJax's
    result."""
    response = page.goto(url, wait_until="load")
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
    facts = page.evaluate(_PAGE_FACTS)
    facts["status"] = response.status if response else None
    facts["raw_tex"] = page.evaluate(_RAW_TEX)
    if facts["math"]:
        page.wait_for_function(_MATH_READY, timeout=30_000)
        facts["mathjax"] = page.evaluate(_MATH_RESULT)
    return facts


def _check_links(visited: dict, html: Path, base: str) -> tuple[int, int, list[str]]:
    """(internal links, of them with an anchor, broken ones): every link to the site names a file that exists and,
    with a #fragment, an id on that page."""
    checked = anchored = 0
    broken = []
    for url, facts in visited.items():
        for link in facts["links"]:
            if not link.startswith(base + "/"):
                continue  # arXiv, GitHub: left external, not followed
            target, _, fragment = link[len(base) :].partition("#")
            target = urllib.parse.unquote(target.split("?")[0])
            path = html / target.lstrip("/")
            path = path / "index.html" if target.endswith("/") else path
            checked += 1
            if not path.is_file():
                broken.append(f"{url[len(base) :]} -> {link[len(base) :]} (no such file)")
            elif fragment:
                anchored += 1
                page_ids = visited.get(base + "/" + path.relative_to(html).as_posix(), {}).get("ids", [])
                if urllib.parse.unquote(fragment) not in page_ids:
                    broken.append(f"{url[len(base) :]} -> {link[len(base) :]} (no such id on the page)")
    return checked, anchored, broken


def test_the_book_renders_offline_with_its_links_images_and_math(browser, book_site):
    base, html, build_s = book_site
    start = time.perf_counter()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    offsite, console, failed = [], [], []

    def only_this_machine(route):
        if urllib.parse.urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:  # a CDN, a font service: recorded, and refused, so the page shows what it looks like offline
            offsite.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_machine)
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{page.url[len(base) :]}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"{page.url[len(base) :]}: {e}"))
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    files = sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)
    visited = {}
    for path in files:
        url = f"{base}/{path.relative_to(html).as_posix()}"
        visited[url] = _visit(page, url)
    context.close()

    links, anchored, broken = _check_links(visited, html, base)
    math = {url[len(base) :]: facts["mathjax"] for url, facts in visited.items() if "mathjax" in facts}
    images = [(url[len(base) :], img) for url, facts in visited.items() for img in facts["images"]]
    result = {
        "pages": len(visited),
        "pages_not_200": [url[len(base) :] for url, facts in visited.items() if facts["status"] != 200],
        "internal_links_checked": links,
        "of_them_with_an_anchor": anchored,
        "broken_links": broken,
        "external_links_not_followed": sum(
            1 for facts in visited.values() for link in facts["links"] if not link.startswith(base)
        ),
        "images": len(images),
        "images_not_rendered": [
            f"{page_url}: {img['src'][len(base) :]}" for page_url, img in images if not img["width"]
        ],
        "math_pages": len(math),
        "math_formulas_rendered": sum(m["containers"] for m in math.values()),
        "math_not_rendered": {url: m["unrendered"] for url, m in math.items() if m["unrendered"]},
        "math_errors": {url: m["errors"] for url, m in math.items() if m["errors"]},
        "raw_tex_in_text": {url[len(base) :]: f["raw_tex"] for url, f in visited.items() if f["raw_tex"]},
        "offsite_requests": offsite,
        "console_errors": console,
        "failed_requests": failed,
        "built_by_the_test_s": round(build_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    BOOK_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    BOOK_RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    assert result["pages"] >= len(_book_tool().sources()), result["pages"]
    problems = {k: v for k, v in result.items() if isinstance(v, list | dict) and v}
    assert not problems, f"the book has problems (all of {BOOK_RESULTS.relative_to(ROOT)}): {problems}"
    assert result["math_pages"] > 0 and result["images"] > 0 and links > 0, result


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
