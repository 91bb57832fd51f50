"""Lists of every function from etcd that hold neither the reactor nor etcd for long.

The first list reads every spec and status in pages of ``LIST_PAGE`` functions (one
transaction each, all at the first page's revision), as plain JSON: a function known
by its name and both mod revisions costs a dict lookup, not two base64 decodes and a
parse. After it, a list asks etcd only for the keys modified since the last listing's
revision (``min_mod_revision``), with the number of keys in each range: etcd's JSON
gateway spends about 25 µs of CPU per key it returns (measured at 10,000 functions:
0.5-0.7 s of etcd's CPU per full list, 0.04 s per list of what changed), and with etcd
on the same cores that was CPU taken from the gate while a console polled the list.

What changed since revision R is enough when no key that existed at R is gone: a
range then holds the keys it held at R plus those created after R (``create_revision``
> R, all of them modified after R, so all of them in the answer). When the count says
otherwise, or more than a page changed, or a new spec comes without its status, the
list reads everything again. Decoding runs in reactor slices (``Slicer``).
"""

from __future__ import annotations

import base64
from typing import (  # List: see list()
    Any, Callable, Generator, Iterator, List, Literal, Sequence, overload)

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from faastwist.model.fsm import FunctionStatus
from faastwist.model.keys import KeySet as FunctionKeys
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import (
    Expired,
    FunctionRecord,
    Listing,
    Page,
    StoreError,
    decode_spec,
    decode_status,
)
from faastwist.util.slices import Slicer

__all__ = ["LIST_PAGE", "EtcdLists", "decoded", "prefix_end", "range_ops"]

log = Logger()

#: Functions per read when listing (one transaction per page): the answer is parsed
#: by one json.loads on the reactor (~1-2 ms for 250 functions' specs and statuses).
LIST_PAGE = 250
#: Functions decoded per step of a slice (a cold decode is ~0.1 ms per function).
DECODE_STEP = 16
#: Entries kept by each memo of the raw reads (cleared when full).
_MEMO_MAX = 50_000


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"
    data[-1] += 1
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def range_ops(bounds: Sequence[tuple[bytes, bytes]], limit: int, revision: int,
              min_mod_revision: int = 0, count_only: bool = False) -> list[dict[str, Any]]:
    """The range reads of one etcd transaction (JSON gateway form); 0: no limit, the
    current revision, no filter."""
    ops = []
    for start, end in bounds:
        op: dict[str, Any] = {"key": b64(start), "range_end": b64(end)}
        if limit:
            op["limit"] = limit
        if revision:
            op["revision"] = revision
        if min_mod_revision:
            op["min_mod_revision"] = min_mod_revision
        if count_only:
            op["count_only"] = True
        ops.append({"request_range": op})
    return ops


@overload
def decoded(kind: Literal["spec"], value: bytes, key: Callable[[], bytes]) -> FunctionSpec: ...


@overload
def decoded(kind: Literal["status"], value: bytes, key: Callable[[], bytes]) -> FunctionStatus: ...


def decoded(kind: str, value: bytes, key: Callable[[], bytes]) -> FunctionSpec | FunctionStatus:
    """A stored spec or status; StoreError naming its key (``key()``, only made then)
    when it cannot be read."""
    try:
        return decode_spec(value) if kind == "spec" else decode_status(value)
    except Exception as exc:
        raise StoreError(f"unreadable {kind} at {key().decode(errors='replace')}: "
                         f"{exc}") from None


def _ranges_of(answer: dict) -> tuple[int, list[tuple[list[dict], int, bool]]]:
    """(revision, [(kvs, count, more) per range]) of a transaction's JSON answer."""
    out = []
    for response in answer.get("responses") or []:
        found = response.get("response_range") or response.get("responseRange") or {}
        out.append((found.get("kvs") or [], int(found.get("count") or 0),
                    bool(found.get("more"))))
    return int(answer.get("header", {}).get("revision", 0)), out


#: what _decode decodes: (name, spec kv, status kv, the record listed before)
_Item = tuple[str, "dict[str, Any] | None", "dict[str, Any] | None", "FunctionRecord | None"]


@attrs.frozen
class _Snapshot:
    """The last listing, for the next one to read only what changed after it."""

    records: dict[str, FunctionRecord]
    keys: dict[str, FunctionKeys]      # every readable keys key, of any name
    revision: int
    counts: tuple[int, int, int]       # spec, status and keys keys at ``revision``


class EtcdLists:
    """``list`` and ``list_page`` of an EtcdStore (``store``: its key layout, decoding
    and calls)."""

    def __init__(self, store: Any, slicer: Slicer) -> None:
        self.store = store
        self.slicer = slicer
        #: base64 key -> (kind, name) or None; (name, spec rev, status rev) -> record
        self._names: dict[str, tuple[str, str] | None] = {}
        self._records: dict[tuple[str, int, int], FunctionRecord] = {}
        self._snapshot: _Snapshot | None = None
        #: lists that read everything (the first, and after a deletion)
        self.full_reads = 0

    # -- reads -------------------------------------------------------------------------

    def _txn(self, ops: list[dict[str, Any]], revision: int) -> Deferred[dict]:
        store = self.store
        body = {"success": ops}

        def request(endpoint: str) -> Deferred:
            return store._http.post(f"{endpoint}{store.api_prefix}/kv/txn", body)

        def compacted(failure: Any) -> Any:
            failure.trap(StoreError)
            if "compacted" in str(failure.value):
                raise Expired(f"revision {revision} was compacted: {failure.value}")
            return failure
        return store._call("list", request, True).addErrback(compacted)

    def _by_name(self, kvs: Sequence[dict]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        names = self._names
        for kv in kvs:
            key = kv.get("key", "")
            if key in names:
                parsed = names[key]
            else:
                parsed = self.store.parse_key(base64.b64decode(key))
                if len(names) >= _MEMO_MAX:
                    names.clear()
                names[key] = parsed
            if parsed is not None:
                out[parsed[1]] = kv
        return out

    def _record(self, name: str, spec_kv: dict | None, status_kv: dict | None,
                previous: FunctionRecord | None) -> FunctionRecord:
        """The record from what was read (``None``: unchanged since ``previous``)."""
        if spec_kv is None and previous is None:
            raise StoreError(f"function {name}: neither its spec nor a listing before")
        if spec_kv is not None:
            spec_revision = int(spec_kv.get("mod_revision", 0))
        else:
            assert previous is not None  # (checked above; for the type checker)
            spec_revision = previous.spec_revision
        if status_kv is not None:
            status_revision = int(status_kv.get("mod_revision", 0))
        else:
            status_revision = previous.status_revision if previous is not None else 0
        memo = self._records
        found = memo.get((name, spec_revision, status_revision))
        if found is not None:
            return found
        key = self.store.key
        if spec_kv is not None:
            spec = decoded("spec", base64.b64decode(spec_kv.get("value", "")),
                           lambda: key("spec", name))
        else:
            assert previous is not None  # (checked above)
            spec = previous.spec
        if status_kv is not None:
            status = decoded("status", base64.b64decode(status_kv.get("value", "")),
                             lambda: key("status", name))
        elif previous is not None:
            status = previous.status
        else:
            # a spec without status (written by hand): the FSM starts afresh; the first
            # update compares the missing status key's mod revision as 0
            status = FunctionStatus.initial(name, 0.0)
        record = FunctionRecord(spec, status, spec_revision, status_revision)
        if status_revision:   # a made-up status is not worth keeping
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[(name, spec_revision, status_revision)] = record
        return record

    def _decode(self, items: List[_Item]) -> Deferred[dict[str, FunctionRecord]]:
        """Records of ``(name, spec kv, status kv, previous)``, DECODE_STEP per step."""
        out: dict[str, FunctionRecord] = {}

        def steps() -> Iterator[None]:
            for start in range(0, len(items), DECODE_STEP):
                for name, spec_kv, status_kv, previous in items[start:start + DECODE_STEP]:
                    out[name] = self._record(name, spec_kv, status_kv, previous)
                yield None
        return self.slicer.run(steps()).addCallback(lambda _: out)

    @inlineCallbacks
    def _raw_chunk(self, after: bytes, limit: int, revision: int,
                   prefix: bytes) -> Generator[Deferred[Any], Any, tuple[List[_Item], int, int, bytes]]:
        """Up to ``limit`` functions after the name ``after`` (raw), and their statuses,
        not yet decoded: ``(items for _decode, revision, remaining, last raw name)``.

        One transaction reads both ranges with the same bounds and limit (every
        function has both keys); when they do not line up (a spec written by hand
        without its status) the statuses of those names are read again."""
        spec_base, status_base = self.store.key("spec", ""), self.store.key("status", "")
        begin = after + b"\0" if after and after >= prefix else prefix
        end_of = (lambda base: prefix_end(base + prefix)) if prefix else prefix_end
        answer = yield self._txn(range_ops(
            [(spec_base + begin, end_of(spec_base)), (status_base + begin, end_of(status_base))],
            limit, revision), revision)
        read_at, ((spec_kvs, total, _), (status_kvs, _, _)) = _ranges_of(answer)
        revision = revision or read_at
        specs, statuses = self._by_name(spec_kvs), self._by_name(status_kvs)
        if specs and list(statuses) != list(specs):
            first, last = min(specs), max(specs)
            answer = yield self._txn(range_ops(
                [(status_base + first.encode(), status_base + last.encode() + b"\0")], 0,
                revision), revision)
            statuses = self._by_name(_ranges_of(answer)[1][0][0])
        items: List[_Item] = [(name, kv, statuses.get(name), None) for name, kv in specs.items()]
        last_raw = (base64.b64decode(spec_kvs[-1].get("key", ""))[len(spec_base):]
                    if spec_kvs else after)
        return items, revision, max(total - len(spec_kvs), 0), last_raw

    @inlineCallbacks
    def _chunk(self, after: bytes, limit: int, revision: int, prefix: bytes
               ) -> Generator[Deferred[Any], Any, tuple[dict[str, FunctionRecord], int, int, bytes]]:
        """``_raw_chunk`` with its records decoded: ``(records, revision, remaining,
        last raw name)``."""
        items, revision, remaining, last = yield self._raw_chunk(after, limit, revision, prefix)
        records = yield self._decode(items)
        return records, revision, remaining, last

    @inlineCallbacks
    def page(self, after: str, limit: int, revision: int, prefix: str) -> Generator[Deferred[Any], Any, Page]:
        """Specs in name order from after ``after``, and the statuses of the same names,
        at one revision; read ``LIST_PAGE`` at a time."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        records: dict[str, FunctionRecord] = {}
        start, remaining = after.encode(), 0
        while True:
            got, revision, remaining, start = yield self._chunk(
                start, min(limit - len(records), LIST_PAGE), revision, prefix.encode())
            records.update(got)
            if not remaining or len(records) >= limit:
                return Page(records, revision, remaining)

    # -- every function ----------------------------------------------------------------

    @inlineCallbacks
    def list(self) -> Generator[Deferred[Any], Any, Listing]:
        """Every function at one revision: what changed since the last listing when
        that is enough, else everything."""
        snapshot = self._snapshot
        if snapshot is not None:
            listing = yield self._since(snapshot)
            if listing is not None:
                return listing
        listing = yield self._everything()
        return listing

    def _bases(self) -> List[bytes]:
        return [self.store.key(kind, "") for kind in ("spec", "status", "keys")]

    def _keys(self, kvs: Sequence[dict]) -> tuple[dict[str, FunctionKeys], set[str]]:
        """Invocation keys by function name, and the names whose value is unreadable."""
        keys: dict[str, FunctionKeys] = {}
        unreadable: set[str] = set()
        for name, kv in self._by_name(kvs).items():
            try:
                keys[name] = FunctionKeys.decode(base64.b64decode(kv.get("value", "")))
            except Exception:
                log.failure("unreadable keys of {name}", name=name)
                unreadable.add(name)
        return keys, unreadable

    def _remember(self, records: dict[str, FunctionRecord], keys: dict[str, FunctionKeys],
                  revision: int, counts: tuple[int, int, int]) -> Listing:
        current = self._snapshot
        if current is None or current.revision <= revision:
            self._snapshot = _Snapshot(dict(records), keys, revision, counts)
        return Listing(records, revision,
                       {name: value for name, value in keys.items() if name in records})

    @inlineCallbacks
    def _everything(self) -> Generator[Deferred[Any], Any, Listing]:
        self.full_reads += 1
        records: dict[str, FunctionRecord] = {}
        raw = yield self._raw_chunk(b"", LIST_PAGE, 0, b"")
        while True:
            items, revision, remaining, after = raw
            # etcd reads the next page while this one is decoded: one after the other,
            # etcd's share and ours add up (a node's start-up waits for this list)
            ahead = self._raw_chunk(after, LIST_PAGE, revision, b"") if remaining else None
            try:
                records.update((yield self._decode(items)))
            except BaseException:
                if ahead is not None:
                    ahead.addErrback(lambda _: None)  # the list failed: nobody waits
                raise
            if ahead is None:
                break
            raw = yield ahead
        # at the same revision: the invocation keys (few functions have them) and how
        # many spec and status keys there are (the next list's check)
        spec_base, status_base, keys_base = self._bases()
        answer = yield self._txn(
            range_ops([(spec_base, prefix_end(spec_base)),
                       (status_base, prefix_end(status_base))], 0, revision, count_only=True)
            + range_ops([(keys_base, prefix_end(keys_base))], 0, revision), revision)
        _, ((_, specs, _), (_, statuses, _), (key_kvs, key_count, _)) = _ranges_of(answer)
        keys, _ = self._keys(key_kvs)
        return self._remember(records, keys, revision, (specs, statuses, key_count))

    @inlineCallbacks
    def _since(self, snapshot: _Snapshot) -> Generator[Deferred[Any], Any, Listing | None]:
        """The listing now, from ``snapshot`` and the keys modified after it; None when
        that is not enough (see the module's docstring)."""
        answer = yield self._txn(range_ops([(base, prefix_end(base)) for base in self._bases()],
                                           LIST_PAGE, 0, min_mod_revision=snapshot.revision + 1),
                                 0)
        revision, ranges = _ranges_of(answer)
        for (kvs, count, more), before in zip(ranges, snapshot.counts):
            created = sum(1 for kv in kvs
                          if int(kv.get("create_revision", 0)) > snapshot.revision)
            if more or count != before + created:
                return None
        (spec_kvs, spec_count, _), (status_kvs, status_count, _), (key_kvs, key_count, _) = ranges
        old = snapshot.records
        specs, statuses = self._by_name(spec_kvs), self._by_name(status_kvs)
        items = []
        for name in sorted(specs.keys() | statuses.keys()):
            previous = old.get(name)
            if previous is None and name not in specs:
                continue   # a status without a spec: no function
            if previous is None and name not in statuses:
                return None   # a new spec: whether it has a status was not read
            items.append((name, specs.get(name), statuses.get(name), previous))
        changed = yield self._decode(items)
        records = dict(old)
        records.update(changed)
        keys = snapshot.keys
        if key_kvs:
            fresh, unreadable = self._keys(key_kvs)
            keys = {name: value for name, value in keys.items() if name not in unreadable}
            keys.update(fresh)
        return self._remember(records, keys, revision, (spec_count, status_count, key_count))
