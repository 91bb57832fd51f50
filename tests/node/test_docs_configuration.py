"""docs/configuration.rst's table and faastwist/config.py name the same keys, both ways
(every key the node reads is documented, every documented key is read), and each
documented default is the one config.py applies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from faastwist import config as config_module
from faastwist.util.fields import FieldReader
from faastwist.util.units import parse_duration, parse_size
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


def documented_defaults() -> dict[str, str]:
    """Key -> the Default column's text (``a`` / ``b`` split over ``x`` / ``.y``)."""
    text = page("configuration")
    start = text.index("\nKey ")
    table = text[start:text.index("\n\n", start)].splitlines()
    # the columns as the table's border draws them
    key_width, default_width = (len(run) for run in table[2].split()[:2])
    meaning = key_width + 1 + default_width + 1
    defaults: dict[str, str] = {}
    for line in table[3:-1]:
        if not line.startswith("``"):
            continue
        key_cell, default_cell = line[:key_width + 1].strip(), line[key_width + 1:meaning].strip()
        keys = re.findall(r"``([\w.]+)``", key_cell)
        keys = [keys[0]] + [keys[0].rsplit(".", 1)[0] + key for key in keys[1:]]
        values = [value.strip() for value in default_cell.split(" / ")]
        for key, value in zip(keys, values if len(values) == len(keys) else values * len(keys)):
            defaults[key] = value
    return defaults


def attribute(config: object, key: str) -> object:
    """``httpServer.keepAlive`` -> ``config.http_server.keep_alive``."""
    for part in key.split("."):
        config = getattr(config, re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", part).lower())
    return config


#: documented defaults that are not one literal value
NOT_LITERAL = {"nodeId", "httpServer.certBase64", "httpServer.keyBase64", "httpServer.http3",
               "admin.auth.basicAuth.userFile", "admin.auth.basicAuth.passwordFile"}


def test_every_documented_default_is_the_default(tmp_path: Path) -> None:
    config = config_module.ControllerConfig.from_dict({}, tmp_path)
    checked = 0
    for key, cell in documented_defaults().items():
        if key in NOT_LITERAL:
            continue
        actual = attribute(config, key)
        literal = re.fullmatch(r"``(.*)``(?: \(off\))?", cell)
        text = literal.group(1) if literal else {"(none)": ""}[cell]
        if isinstance(actual, bool):
            expected: object = {"true": True, "false": False}[text]
        elif isinstance(actual, int):
            expected = int(text) if text.isdigit() else parse_size(text)
        elif isinstance(actual, float):
            expected = parse_duration(text)
        elif isinstance(actual, tuple):
            expected = tuple(yaml.safe_load(text))
        elif key == "dataDir":   # relative: from the working directory, not the file's folder
            expected = str(Path(text).resolve())
        elif text.startswith("{dataDir}"):
            expected = config.data_dir + text[len("{dataDir}"):]
        elif text.startswith("./"):
            expected = str((tmp_path / text).resolve())
        else:
            expected = text
        assert (key, actual) == (key, expected)
        checked += 1
    assert checked > 70
