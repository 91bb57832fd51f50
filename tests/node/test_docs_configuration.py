"""docs/configuration.rst's table and faastwist/config.py name the same keys, both ways:
every key the node reads is documented, every documented key is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faastwist import config as config_module
from faastwist.util.fields import FieldReader
from tests.support.docs import page


def keys_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every dotted key ``ControllerConfig.from_dict`` asks its readers for. Sections are
    given so that their conditional keys are read too (basicAuth's files); a key that
    is a section of others is not a key of its own."""
    seen: set[str] = set()
    raw = FieldReader.raw

    def recording(self: FieldReader, key: str, *args: object) -> object:
        seen.add(self.child_path(key))
        return raw(self, key, *args)
    monkeypatch.setattr(FieldReader, "raw", recording)
    secret = tmp_path / "basic"
    secret.write_text("admin\n")
    config_module.ControllerConfig.from_dict(
        {"admin": {"auth": {"basicAuth": {"userFile": str(secret),
                                          "passwordFile": str(secret)}}}}, tmp_path)
    return {key for key in seen if not any(other.startswith(key + ".") for other in seen)}


def keys_documented() -> set[str]:
    """The first column of the reference table: ``a.b`` / ``.c`` is ``a.b`` and ``a.c``."""
    text = page("configuration")
    start = text.index("\nKey ")
    table = text[start:text.index("\n\n", start)]
    keys: set[str] = set()
    for line in table.splitlines():
        names = re.findall(r"``([\w.]+)``", line.split("  ")[0])
        for name in names:
            if name.startswith("."):
                name = names[0].rsplit(".", 1)[0] + name
            keys.add(name)
    return keys


def test_every_key_read_is_documented_and_every_documented_key_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read, documented = keys_read(tmp_path, monkeypatch), keys_documented()
    assert len(read) > 80, sorted(read)
    assert sorted(read - documented) == [], "read by config.py, missing in the docs"
    assert sorted(documented - read) == [], "documented, never read by config.py"
