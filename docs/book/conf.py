"""Sphinx configuration of the series as a static site (`make book`; tools/book.py).

tools/book.py copies the sources (notebooks/0*.ipynb with their committed outputs, docs/*.md, README.md, this
folder's index.md) and a glossary page cut from notebook 00 into build/book-src/, then runs Sphinx on that folder
with this file: `sphinx-build -c docs/book build/book-src build/book/html`. Nothing is executed and nothing is written
into notebooks/ or docs/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # tools/book.py, for book.jupyter_anchor

project = "hpnb: Hidden Positives, notebook by notebook"
author = "the hpnb authors"
copyright = "the hpnb authors, MIT licence"

extensions = [
    "myst_nb",  # notebooks and Markdown (MyST); brings myst_parser
    # MathJax 3.2 from the installed package, not Sphinx 9's default (MathJax 4 from a CDN): it sets mathjax_path to
    # its copy, which it writes to _static/mathjax/ once a build succeeds. Its module name has hyphens; it does not say
    # whether it is safe in parallel, so Sphinx would warn (an error here) with -j above 1: tools/book.py runs -j 1
    "sphinx-mathjax-offline",
]

root_doc = "index"

# --- notebooks: the committed outputs as they are --------------------------------------------------------------------
nb_execution_mode = "off"  # never run a notebook: the committed outputs are the tested CPU run
nb_merge_streams = True  # consecutive prints of a cell show as one block, as in JupyterLab

# --- Markdown -------------------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath"]  # $...$ and $$...$$, as JupyterLab renders them

myst_heading_anchors = 3
# JupyterLab's heading anchors, so the notebooks' links to a heading (`00_setup_and_tour.ipynb#Glossary:-paper-...`)
# point at the same heading on the site; named by its import path, not imported: a function in the configuration
# cannot be cached with Sphinx's environment (a warning, so an error here)
myst_heading_slug_func = "book.jupyter_anchor"

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "Hidden Positives, notebook by notebook"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,  # it would link to _sources/, which is not written (html_copy_source below)
}
# the reader's system colours; without a default the theme logs a console error on every first visit
html_context = {"default_mode": "auto"}
html_show_sourcelink = False  # the sources are the repository's files, not copies under _sources/
html_copy_source = False
