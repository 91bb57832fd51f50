"""The documentation as tests read it: README.rst and the pages under ``docs/``.

Tours are tested as written: a test takes a page's code block by the heading above it,
so moving a tour to another page means changing the page named here, not the test.
"""

from __future__ import annotations

import dataclasses
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


def expected_output(script: str) -> list[str]:
    """What a tour says its commands print: each ``# -> `` line, in order."""
    return [line.split("# -> ", 1)[1].rstrip() for line in script.splitlines()
            if line.startswith("# -> ")]


def printed(output: str) -> list[str]:
    """A tour's output as lines to compare with ``expected_output`` (trailing blanks
    dropped: echo's ``V3 Body is `` ends in one, which a page does not show)."""
    return [line.rstrip() for line in output.splitlines()]


def transcript(block: str) -> list[tuple[str, list[str]]]:
    """A console block as ``(command, what it prints)`` pairs: each ``$ `` line's command
    (its ``  #`` comment dropped) and the lines below it up to the next one."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:].split("  #")[0].rstrip(), []))
        elif line.strip():
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line.rstrip())
    return steps


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line for line, where ``...`` in an expected line stands for any text."""
    return len(expected) == len(actual) and all(
        re.fullmatch(".*".join(map(re.escape, want.split("..."))), got)
        for want, got in zip(expected, actual))


#: languages of blocks that are commands to paste (each run by a test, or saying why not)
COMMAND_LANGUAGES = ("sh", "console")
#: an rst comment right before a command block that no test runs, and why
NOT_RUN = ".. not run by a test:"


@dataclasses.dataclass(frozen=True)
class Block:
    """One literal block of a page: ``language`` is "" for a ``::`` block."""

    page: str
    heading: str
    language: str
    text: str
    not_run: str    # the reason given, or ""

    @property
    def is_commands(self) -> bool:
        return self.language in COMMAND_LANGUAGES


def pages() -> list[str]:
    return ["README"] + sorted(path.stem for path in DOCS.glob("*.rst"))


def blocks(name: str) -> list[Block]:
    """Every literal block of page ``name``, with the section title above it."""
    lines = page(name).split("\n")
    found: list[Block] = []
    heading = ""
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and not line.startswith(" ") and re.fullmatch(r"([=\-~^])\1+", following):
            heading = line.strip()
        if line.startswith(".. code-block::"):
            language = line.split("::", 1)[1].strip()
        elif line.endswith("::") and not line.startswith(".. "):
            language = ""
        else:
            continue
        body = []
        for later in lines[i + 1:]:
            if later.strip() and not later.startswith(" "):
                break
            body.append(later)
        text = "\n".join(body).strip("\n")
        found.append(Block(name, heading, language, text, _reason(lines, i)))
    return found


def _reason(lines: list[str], at: int) -> str:
    """The ``NOT_RUN`` comment just above line ``at`` (its indented lines joined)."""
    j = at - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    while j >= 0 and lines[j].startswith("   ") and not lines[j].startswith(NOT_RUN):
        j -= 1
    if j < 0 or not lines[j].startswith(NOT_RUN):
        return ""
    reason = [lines[j][len(NOT_RUN):]]
    reason += [line for line in lines[j + 1:at] if line.startswith("   ")]
    return " ".join(" ".join(reason).split())
