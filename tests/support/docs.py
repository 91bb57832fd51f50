"""The documentation as tests read it: README.rst and the pages under ``docs/``.

Tours are tested as written: a test takes a page's code block by the heading above it,
so moving a tour to another page means changing the page named here, not the test.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_BLOCK = re.compile(r"\.\. code-block:: \w+\n(?:   :\w[^\n]*\n)*\n((?:   .*\n|\n)+)")


def page(name: str) -> str:
    """``README`` or a page of ``docs/`` by its name (``openfaas``)."""
    path = ROOT / "README.rst" if name == "README" else DOCS / f"{name}.rst"
    return path.read_text(encoding="utf-8")


def code_block_after(name: str, heading: str) -> str:
    """The first ``code-block`` after ``heading`` on page ``name``, dedented."""
    text = page(name)
    section = text[text.index(heading):]
    match = _BLOCK.search(section)
    assert match, f"no code block after {heading} in {name}"
    return "\n".join(line[3:] for line in match.group(1).splitlines()).rstrip("\n") + "\n"
