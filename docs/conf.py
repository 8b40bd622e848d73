"""Sphinx configuration of seqmem's manual.

Build it (from the repository root, after ``pip install -e ".[docs]"``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

``-W`` makes every warning an error, as CI builds it. The gallery (``docs/examples/``) is executed at build
time; ``-D plot_gallery=0`` skips running it while editing prose. Nothing is fetched from the network: no
intersphinx inventories, no link checking.
"""

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the gallery's figures go to files

from seqmem import __version__

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "examples"))  # the gallery's shared helpers, if any

project = "seqmem"
author = "The seqmem authors"
copyright = "2026, The seqmem authors"
release = __version__
version = __version__

extensions = [
    "myst_parser",  # guide pages in Markdown (GitHub tables, the README's own dialect)
    "sphinx.ext.autodoc",  # the API reference, from the docstrings
    "sphinx.ext.napoleon",  # Google-style Args/Returns/Raises sections
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",  # docs/examples/*.py run at build time, their figures rendered
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# figures/ holds the tables and images the pages include, not pages of their own.
exclude_patterns = [
    "_build",
    "figures",
    "sg_execution_times.rst",
    "examples/README.rst",
    "auto_examples/*.ipynb",
    "auto_examples/*.py.md5",
]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve to headings of level ≤ 3

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Lightning's hooks that seqmem overrides without a docstring of its own stay out of seqmem's reference.
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # every example draws a figure and is executed
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    # One thread, as the studies run: the examples' numbers repeat on a given machine.
    "reset_modules": ("matplotlib",),
}
os.environ.setdefault("OMP_NUM_THREADS", "1")

html_theme = "furo"
html_title = f"seqmem {__version__}"
html_static_path: list[str] = []
suppress_warnings = ["myst.header"]
