"""The documentation builds without a warning: ``docs/`` with Sphinx as ``make docs``
runs it (``-W``), README.rst with docutils as PyPI renders a long description."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docutils.core
import docutils.utils
import pytest

from tests.support.docs import DOCS, ROOT

README_LINES_MAX = 300


@pytest.mark.process
def test_sphinx_builds_the_docs_with_warnings_as_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", done.stderr
    built = {path.stem for path in (tmp_path / "html").glob("*.html")}
    assert {path.stem for path in DOCS.glob("*.rst")} <= built


def test_every_page_is_in_the_table_of_contents() -> None:
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    listed = {line.strip() for line in index.splitlines() if line.startswith("   ")
              and not line.strip().startswith(":")}
    pages = {path.stem for path in DOCS.glob("*.rst")} - {"index"}
    assert pages == listed


def test_the_readme_is_short_and_renders_without_a_warning() -> None:
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LINES_MAX
    # halt at a warning, as a long description that PyPI cannot render fails its upload
    docutils.core.publish_doctree(text, settings_overrides={
        "halt_level": docutils.utils.Reporter.WARNING_LEVEL, "report_level": 5})
