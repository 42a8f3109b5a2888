# Sphinx configuration for the mailnet documentation.
#
# Build: tox -e docs   (sphinx-build -W -b html docs docs/_build/html)

import os
import re

_here = os.path.dirname(os.path.abspath(__file__))

# Read the version without importing mailnet, so the docs build needs only
# Sphinx.
with open(os.path.join(_here, "..", "mailnet", "__init__.py"), encoding="utf-8") as _f:
    release = re.search(r'^__version__ = "([^"]+)"', _f.read(), re.MULTILINE).group(1)
version = ".".join(release.split(".")[:2])

project = "mailnet"
author = "the mailnet authors"
copyright = "the mailnet authors"

extensions = []
master_doc = "index"
exclude_patterns = ["_build"]
# Shell sessions and ini files are the usual literal blocks.
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = "mailnet %s" % (release,)
html_static_path = []
