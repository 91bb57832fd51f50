"""Sphinx settings for faastwist's documentation (``make docs``).

The build needs no network (no intersphinx, no remote images) and runs with ``-W``:
a warning (a broken reference, a malformed table) fails ``make docs`` and so
``make test``.
"""

import re
from pathlib import Path

_init = (Path(__file__).resolve().parent.parent / "faastwist" / "__init__.py").read_text()

project = "faastwist"
author = "the faastwist authors"
copyright = "the faastwist authors"
release = version = re.search(r'__version__ = "([^"]+)"', _init).group(1)

# :ref:`Section title` reaches a section on any page: pages refer to each other by the
# titles readers see
extensions = ["sphinx.ext.autosectionlabel"]
autosectionlabel_prefix_document = False

root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
# code blocks are shell, YAML and console sessions; no guessing of other lexers
highlight_language = "none"
