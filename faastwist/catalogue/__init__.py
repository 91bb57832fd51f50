"""The function store: a catalogue in OpenFaaS's store format, served by the node.

faas-cli's ``store list/deploy --url URL`` reads ``{"version", "functions": [{title,
name, description, images: {platform: image}, fprocess, environment, labels,
annotations, readOnlyRootFilesystem, ...}]}`` with a plain GET (no credentials), so
``GET /system/store`` is open: a catalogue names what may be deployed, not what runs.
The node serves the shipped catalogue (``functions.json`` here: process functions that
run on any Debian machine), or ``store.file``, or ``store.url`` (fetched, size-capped,
cached for ``CACHE_TTL``). Every catalogue is checked here, so a bad one is a clear
502/500 naming the field, never a client's parse error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

__all__ = ["CACHE_TTL", "FAILURE_TTL", "MAX_SIZE", "SHIPPED", "Catalogue", "CatalogueError",
           "check_catalogue", "deployment", "find"]

SHIPPED = Path(__file__).with_name("functions.json")
MAX_SIZE = 4 * 2**20
CACHE_TTL = 60.0
#: a failed load is answered from memory this long: anonymous GETs cannot make the node
#: hammer store.url
FAILURE_TTL = 10.0
FETCH_TIMEOUT = 10.0
#: the platform keys faas-cli looks an image up by (``store list --platform``)
PLATFORMS = ("x86_64", "arm64", "armhf")
_MAPS = ("environment", "labels", "annotations")


class CatalogueError(Exception):
    """A catalogue that cannot be served; the message names the source and the field."""


def _text_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CatalogueError(f"{where}: must be a map of text to text")
    return dict(value)


def check_catalogue(data: bytes, source: str) -> dict[str, Any]:
    """The catalogue in ``data`` with each entry's known fields checked (unknown ones,
    like the OpenFaaS store's ``icon`` and ``author``, pass through)."""
    if len(data) > MAX_SIZE:
        raise CatalogueError(f"{source}: larger than {MAX_SIZE} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CatalogueError(f"{source}: not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("functions"), list):
        raise CatalogueError(f"{source}: must be an object with a functions list")
    functions = []
    for index, entry in enumerate(document["functions"]):
        where = f"{source}: functions[{index}]"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: must be an object")
        for key in ("name", "title", "description", "fprocess"):
            if not isinstance(entry.get(key, ""), str):
                raise CatalogueError(f"{where}.{key}: must be text")
        if not entry.get("name"):
            raise CatalogueError(f"{where}.name: is required")
        checked = dict(entry)
        checked["images"] = _text_map(entry.get("images"), f"{where}.images")
        for key in _MAPS:
            checked[key] = _text_map(entry.get(key), f"{where}.{key}")
        if not isinstance(entry.get("readOnlyRootFilesystem", False), bool):
            raise CatalogueError(f"{where}.readOnlyRootFilesystem: must be true or false")
        functions.append(checked)
    return {"version": str(document.get("version", "0.2.0")), "functions": functions}


def find(catalogue: Mapping[str, Any], wanted: str) -> dict[str, Any] | None:
    """The entry named (or titled, as faas-cli matches) ``wanted``."""
    for entry in catalogue["functions"]:
        if wanted in (entry.get("name"), entry.get("title")):
            return entry
    return None


def deployment(entry: Mapping[str, Any], name: str | None = None,
               platform: str = "x86_64") -> dict[str, Any]:
    """The FunctionDeployment faas-cli's ``store deploy`` would send for ``entry``;
    CatalogueError when it cannot run on a node that runs processes, not images."""
    title = entry.get("name", "")
    if not entry.get("fprocess"):
        raise CatalogueError(f"store entry {title} has no fprocess: it needs its container "
                             f"image, and this provider runs processes, not images")
    images = entry.get("images") or {}
    image = next((v for k, v in images.items() if k.lower() == platform.lower()),
                 next(iter(images.values()), f"store/{title}"))
    out: dict[str, Any] = {"service": name or title, "image": image,
                           "envProcess": entry["fprocess"]}
    for ours, theirs in (("envVars", "environment"), ("labels", "labels"),
                         ("annotations", "annotations")):
        if entry.get(theirs):
            out[ours] = dict(entry[theirs])
    if entry.get("readOnlyRootFilesystem"):
        out["readOnlyRootFilesystem"] = True
    return out


class Catalogue:
    """Where the node's catalogue comes from, and its cache."""

    def __init__(self, url: str = "", file: str = "", reactor: Any = None,
                 fetch: Callable[[str], Deferred] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.file = file or str(SHIPPED)
        self.reactor = reactor
        self._fetch = fetch or self._get
        self.clock = clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._failed: tuple[float, CatalogueError] | None = None
        self._loading: Deferred[dict[str, Any]] | None = None
        self._waiters: list[Deferred[dict[str, Any]]] = []
        self._encoded: tuple[dict[str, Any], bytes] | None = None

    @property
    def source(self) -> str:
        return f"store.url {self.url}" if self.url else (
            f"store.file {self.file}" if self.file != str(SHIPPED) else "the shipped catalogue")

    async def load(self) -> dict[str, Any]:
        """The checked catalogue (cached ``CACHE_TTL``; a store.url that fails keeps
        serving its last good copy). Concurrent callers share one load, and a failure
        is remembered for ``FAILURE_TTL``."""
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < CACHE_TTL:
            return self._cached[1]
        if self._failed is not None and now - self._failed[0] < FAILURE_TTL:
            if self._cached is not None:
                return self._cached[1]
            raise self._failed[1]
        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiters.append(waiter)   # before the load starts: it may finish at once
        if self._loading is None:
            self._loading = Deferred.fromCoroutine(self._load(now))
            self._loading.addBoth(self._loaded)
        return await waiter

    async def body(self) -> bytes:
        """``load()`` as JSON bytes, encoded once per catalogue (the route is open: a
        4 MiB catalogue is not encoded again for each anonymous GET)."""
        catalogue = await self.load()
        if self._encoded is None or self._encoded[0] is not catalogue:
            self._encoded = (catalogue, json.dumps(catalogue).encode())
        return self._encoded[1]

    def _loaded(self, result: Any) -> None:
        self._loading = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _load(self, now: float) -> dict[str, Any]:
        try:
            if self.url:
                data = await self._fetch(self.url)
            else:
                data = await deferToThread(_read_file, Path(self.file))
            catalogue = check_catalogue(data, self.source)
        except Exception as exc:
            error = exc if isinstance(exc, CatalogueError) else CatalogueError(
                f"{self.source}: {exc}")
            self._failed = (now, error)
            if self._cached is not None:
                log.warn("{source} unusable ({error}); serving its last good copy",
                         source=self.source, error=str(error))
                return self._cached[1]
            raise error from None
        self._failed = None
        self._cached = (now, catalogue)
        return catalogue

    async def _get(self, url: str) -> bytes:
        import treq

        response = await treq.get(url, timeout=FETCH_TIMEOUT, reactor=self.reactor)
        if response.code != 200:
            raise CatalogueError(f"{self.source}: answered HTTP {response.code}")
        length = response.length
        if isinstance(length, int) and length > MAX_SIZE:
            raise CatalogueError(f"{self.source}: larger than {MAX_SIZE} bytes")
        chunks: list[bytes] = []
        size = [0]

        def collect(chunk: bytes) -> None:
            size[0] += len(chunk)
            if size[0] > MAX_SIZE:
                raise CatalogueError(f"{self.source}: larger than {MAX_SIZE} bytes")
            chunks.append(chunk)
        await treq.collect(response, collect)
        return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SIZE + 1)
    except OSError as exc:
        raise CatalogueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data
