"""Sphinx configuration for skknn."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
import skknn  # noqa: E402

project = "skknn"
author = "the skknn developers"
release = skknn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
autodoc_default_options = {"members": True, "inherited-members": True}
exclude_patterns = ["_build", "generated/*.examples"]
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
# No network here: intersphinx inventories are optional.
intersphinx_disabled_reftypes = ["*"]
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
}
html_theme = "alabaster"
