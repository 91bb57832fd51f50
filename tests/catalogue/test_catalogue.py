"""The function store's catalogue: checks naming the field, lookup, the deployment
faas-cli's `store deploy` would send, and where a node's catalogue comes from."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.defer import fail, succeed

from faastwist.catalogue import (
    CACHE_TTL,
    FAILURE_TTL,
    MAX_SIZE,
    SHIPPED,
    Catalogue,
    CatalogueError,
    check_catalogue,
    deployment,
    find,
)


def doc(*functions: dict) -> bytes:
    return json.dumps({"version": "0.2.0", "functions": list(functions)}).encode()


def test_the_shipped_catalogue_is_valid_and_every_entry_runs_a_process() -> None:
    catalogue = check_catalogue(SHIPPED.read_bytes(), "shipped")
    assert len(catalogue["functions"]) >= 5
    for entry in catalogue["functions"]:
        body = deployment(entry)
        assert body["service"] == entry["name"] and body["envProcess"] == entry["fprocess"]
        assert set(entry["images"]) == {"x86_64", "arm64", "armhf"}


@pytest.mark.parametrize("data, message", [
    (b"[1]", "src: must be an object with a functions list"),
    (b"{not", "src: not JSON"),
    (doc("x"), "src: functions[0]: must be an object"),
    (doc({"title": "t"}), "src: functions[0].name: is required"),
    (doc({"name": "a", "fprocess": 3}), "src: functions[0].fprocess: must be text"),
    (doc({"name": "a", "images": ["x"]}), "src: functions[0].images: must be a map"),
    (doc({"name": "a"}, {"name": "b", "labels": {"k": 1}}),
     "src: functions[1].labels: must be a map"),
    (doc({"name": "a", "readOnlyRootFilesystem": "yes"}),
     "src: functions[0].readOnlyRootFilesystem: must be true or false"),
    (b" " * (MAX_SIZE + 1), "src: larger than"),
])
def test_bad_catalogues_name_the_field(data: bytes, message: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        check_catalogue(data, "src")
    assert str(caught.value).startswith(message), caught.value


def test_find_by_name_or_title_and_the_deployment_sent() -> None:
    catalogue = check_catalogue(doc(
        {"name": "figlet", "title": "Figlet", "fprocess": "figlet",
         "images": {"X86_64": "functions/figlet:0.13", "arm64": "functions/figlet-arm"},
         "environment": {"write_timeout": "5s"}, "labels": None,
         "annotations": {"a": "b"}, "readOnlyRootFilesystem": True, "icon": "i.png"},
        {"name": "nodeinfo", "fprocess": ""}), "src")
    entry = find(catalogue, "Figlet")
    assert entry is find(catalogue, "figlet") and find(catalogue, "nope") is None
    assert entry["icon"] == "i.png"   # the OpenFaaS store's other fields pass through
    assert deployment(entry, "banner") == {
        "service": "banner", "image": "functions/figlet:0.13", "envProcess": "figlet",
        "envVars": {"write_timeout": "5s"}, "annotations": {"a": "b"},
        "readOnlyRootFilesystem": True}
    assert deployment(entry, platform="arm64")["image"] == "functions/figlet-arm"
    with pytest.raises(CatalogueError, match="store entry nodeinfo has no fprocess"):
        deployment(find(catalogue, "nodeinfo"))


@pytest_twisted.ensureDeferred
async def test_store_file_and_the_shipped_default(tmp_path) -> None:
    shipped = Catalogue()
    assert (await shipped.load()) == check_catalogue(SHIPPED.read_bytes(), "shipped")
    body = await shipped.body()
    assert json.loads(body) == await shipped.load()
    assert (await shipped.body()) is body          # encoded once while it is cached
    own = tmp_path / "catalogue.json"
    own.write_bytes(doc({"name": "mine", "fprocess": "cat"}))
    catalogue = Catalogue(file=str(own))
    assert [f["name"] for f in (await catalogue.load())["functions"]] == ["mine"]
    with pytest.raises(CatalogueError, match="cannot read .*missing.json"):
        await Catalogue(file=str(tmp_path / "missing.json")).load()


@pytest_twisted.ensureDeferred
async def test_store_url_is_cached_and_a_failure_keeps_the_last_good_copy() -> None:
    now = [0.0]
    answers = [succeed(doc({"name": "one"})), fail(OSError("connection refused")),
               succeed(b"{broken"), succeed(doc({"name": "two"}))]
    fetched: list[str] = []

    def fetch(url: str):
        fetched.append(url)
        return answers.pop(0)
    catalogue = Catalogue(url="http://store.local/f.json", fetch=fetch, clock=lambda: now[0])
    names = lambda c: [f["name"] for f in c["functions"]]
    assert names(await catalogue.load()) == ["one"]
    now[0] += CACHE_TTL - 1
    assert names(await catalogue.load()) == ["one"] and len(fetched) == 1   # cached
    now[0] += 2
    assert names(await catalogue.load()) == ["one"]       # refused: last good copy
    assert names(await catalogue.load()) == ["one"] and len(fetched) == 2   # remembered
    now[0] += FAILURE_TTL
    assert names(await catalogue.load()) == ["one"]       # broken: last good copy
    now[0] += FAILURE_TTL
    assert names(await catalogue.load()) == ["two"] and len(fetched) == 4


@pytest_twisted.ensureDeferred
async def test_without_a_good_copy_a_failure_is_an_error_remembered_a_while() -> None:
    """Anonymous GETs of /system/store cannot make the node fetch store.url on each."""
    now, fetched = [0.0], []

    def fetch(url: str):
        fetched.append(url)
        return fail(OSError("connection refused"))
    catalogue = Catalogue(url="http://store.local/f.json", fetch=fetch, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(CatalogueError, match="store.url http://store.local/f.json: "
                                                 "connection refused"):
            await catalogue.load()
    assert len(fetched) == 1
    now[0] += FAILURE_TTL
    with pytest.raises(CatalogueError):
        await catalogue.load()
    assert len(fetched) == 2


def test_concurrent_loads_share_one_fetch() -> None:
    from twisted.internet.defer import Deferred, ensureDeferred

    pending: list[Deferred] = []

    def fetch(url: str) -> Deferred:
        pending.append(Deferred())
        return pending[-1]
    catalogue = Catalogue(url="http://store.local/f.json", fetch=fetch, clock=lambda: 0.0)
    results: list = []
    for _ in range(5):
        ensureDeferred(catalogue.load()).addBoth(results.append)
    assert len(pending) == 1 and results == []
    pending[0].callback(doc({"name": "one"}))
    assert [[f["name"] for f in r["functions"]] for r in results] == [["one"]] * 5
