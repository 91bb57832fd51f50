"""docs/architecture.rst names every package of faastwist/ and every module in it, so a
module added, moved or renamed is a module the page has to explain."""

from __future__ import annotations

import re

from tests.support.docs import ROOT, page

PACKAGE = ROOT / "faastwist"


def sections() -> dict[str, str]:
    """The page's text per section title."""
    text = page("architecture")
    parts = re.split(r"^(.+)\n[-=]+\n", text, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def test_every_package_has_its_section_and_every_module_is_named_in_it() -> None:
    by_title = sections()
    packages = sorted(path.name for path in PACKAGE.iterdir()
                      if (path / "__init__.py").exists())
    assert len(packages) >= 15
    for name in packages:
        [title] = [title for title in by_title if f"{name}/" in title.split(", ")
                   or title == f"{name}/"]
        modules = sorted(path.stem for path in (PACKAGE / name).glob("*.py")
                         if path.stem != "__init__")
        missing = [module for module in modules
                   if not re.search(rf"``(\w+/)?{module}(\.py)?``", by_title[title])]
        assert missing == [], f"{name}/: not on the page: {missing}"


def test_the_top_level_modules_and_the_three_walks_are_there() -> None:
    by_title = sections()
    top = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    missing = [module for module in top if f"{module}.py" not in by_title["Top-level modules"]]
    assert missing == []
    assert {"An invocation", "A create", "An asynchronous call"} <= set(by_title)
