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
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Document what skknn's own base class provides (kneighbors, ...), not the
# scikit-learn mixins' members, whose docstrings point into sklearn's docs.
autodoc_default_options = {
    "members": True,
    "inherited-members": "BaseEstimator,TransformerMixin,ClassNamePrefixFeaturesOutMixin,"
    "_SetOutputMixin,_MetadataRequester",
}
exclude_patterns = ["_build", "generated/*.examples"]
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
}
html_theme = "alabaster"
