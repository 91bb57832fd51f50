"""The FunctionStore on etcd (through txaioetcd), shared by every node of a controller.

Each function is two keys, ``{prefix}/{controller}/spec/{fn}`` and ``.../status/{fn}``.
Every access is one etcd transaction: a get reads both keys exactly (never a prefix
read, so ``demo`` is not confused with ``demo10``) at one revision; writes compare the
mod revisions of *both* keys, so an admin update racing a reconciler write never both
win; a failed compare reads the spec key in the same round trip to tell NotFound from
Conflict. Several endpoints: one call is one round over the members
(store/failover.py): each at most once, readers hedged past a silent member, a member
that timed out tried last for a while, a caller's cancel the end of the round.
"""

from __future__ import annotations

import base64
import functools
from typing import (  # List: EtcdStore has a method named list
    TYPE_CHECKING, Any, Callable, Generator, List, Sequence, TypeVar)

import attrs
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from txaioetcd._lease import Lease
from txaioetcd import (
    CompCreated,
    CompModified,
    CompValue,
    Error as EtcdError,
    Failed,
    KeyValue,
    OpDel,
    OpGet,
    OpSet,
    Transaction,
)

from faastwist.store.failover import (
    HEDGE_AFTER,
    LostLeader,
    Members,
    Miss,
    Round,
    RoundFailed,
    describe,
)
from faastwist.model.fsm import FunctionStatus
from faastwist.model.keys import KeySet as FunctionKeys
from faastwist.metrics import Metrics
from faastwist.model.spec import FunctionSpec
from faastwist.store.base import (
    AlreadyExists,
    Change,
    Conflict,
    Expired,
    FunctionRecord,
    Listing,
    NotFound,
    Page,
    StoreError,
    Fenced,
    OutcomeUnknown,
    StoreUnavailable,
    decode_spec,
    decode_status,
    encode_spec,
    encode_status,
)
from faastwist.store.etcdcompat import (
    NO_LEADER,
    EtcdHttp,
    EtcdHttpError,
    GatewayClient,
    LeaseApi,
    apply_api_prefix,
    member_agent,
    probe_api_prefix,
)
from faastwist.store.etcdlist import EtcdLists, b64, decoded, prefix_end, range_ops
from faastwist.store.etcdwatch import EtcdWatch, KeyEvent
from faastwist.util.failures import error_of
from faastwist.util.slices import Slicer
from faastwist.util.reactor import IFullReactor

log = Logger()

#: Idle connections kept per etcd endpoint.
POOLED_CONNECTIONS = 24

#: gRPC codes etcd uses for "try again / elsewhere" (DEADLINE_EXCEEDED, UNAVAILABLE).
_TRANSIENT_CODES = frozenset({4, 14})


def _transient(exc: EtcdError | EtcdHttpError) -> bool:
    """etcd's "try again or elsewhere": the codes, a gateway 5xx, or its own deadline
    (a write that outlived etcd's request timeout comes back as code 2, Unknown)."""
    message = str(exc.message)
    return (exc.code in _TRANSIENT_CODES
            or (isinstance(exc, EtcdHttpError) and exc.status >= 500)
            or "deadline exceeded" in message or "timed out" in message)


def _not_applied(exc: BaseException) -> bool:
    """Whether a write surely did not reach etcd's log (safe to send elsewhere)."""
    if isinstance(exc, ConnectError):
        return True
    message = getattr(exc, "message", None)
    return isinstance(exc, (EtcdError, EtcdHttpError)) and NO_LEADER in str(message)


def _miss_kind(miss: Miss) -> str:
    if miss.timed_out:
        return "timeout"
    if isinstance(miss.reason, ConnectError):
        return "refused"
    if isinstance(miss.reason, LostLeader) or NO_LEADER in str(getattr(miss.reason, "message", "")):
        return "no_leader"
    return "error"


def _result_label(exc: BaseException) -> str:
    for kind, label in ((NotFound, "not_found"), (AlreadyExists, "already_exists"),
                        (Conflict, "conflict"), (StoreUnavailable, "unavailable")):
        if isinstance(exc, kind):
            return label
    return "error"


_T = TypeVar("_T")
if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec

    _P = ParamSpec("_P")


def _counted(op: str) -> Callable[
        [Callable[Concatenate[EtcdStore, _P], Generator[Deferred[Any], Any, _T]]],
        Callable[Concatenate[EtcdStore, _P], Deferred[_T]]]:
    """Run the generator method as inlineCallbacks and count its outcome in metrics."""

    def decorate(method: Callable[Concatenate[EtcdStore, _P], Generator[Deferred[Any], Any, _T]]
                 ) -> Callable[Concatenate[EtcdStore, _P], Deferred[_T]]:
        run = inlineCallbacks(method)

        @functools.wraps(method)
        def wrapper(store: EtcdStore, /, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
            def done(result: _T) -> _T:
                store.metrics.store_operations.labels(op, "ok").inc()
                return result

            def failed(failure: Failure) -> Failure:
                store.metrics.store_operations.labels(op, _result_label(error_of(failure))).inc()
                return failure

            return run(store, *args, **kwargs).addCallbacks(done, failed)
        return wrapper
    return decorate


class EtcdStore:
    """FunctionStore of one controller on an etcd cluster; call ``connect()`` first."""

    def __init__(self, reactor: IFullReactor, endpoints: Sequence[str], prefix: str, controller: str,
                 timeout: float, metrics: Metrics | None = None, start_index: int = 0,
                 tls: IPolicyForHTTPS | None = None, slicer: Slicer | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd.endpoints: at least one endpoint is needed")
        for endpoint in endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"etcd.endpoints: {endpoint!r} must be an http:// or https:// URL")
        if timeout <= 0:
            raise ValueError(f"etcd timeout must be positive, got {timeout}")
        self.reactor = reactor
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.controller = controller
        self.timeout = timeout
        self.metrics = metrics if metrics is not None else Metrics()
        self.base = f"{self.prefix}/{controller}/".encode()
        self.api_prefix: str | None = None
        self._http = EtcdHttp(reactor, tls=tls)
        self._lease: LeaseApi | None = None
        # one connection per stream, never pooled
        self._watch_agent = member_agent(reactor, tls)
        self._clients = {e: GatewayClient(reactor, e, _pool(reactor), tls)
                         for e in self.endpoints}
        # nodes start at different endpoints (the caller passes a node-specific index),
        # so losing one member does not hit every node's connection at once
        self.members = Members(tuple(self.endpoints), reactor, start_index)
        self._watches: set[EtcdWatch] = set()
        #: lists and pages (decoded in reactor slices: ``slicer``, else the store's own)
        self.lists = EtcdLists(self, slicer if slicer is not None else Slicer(reactor))

    # keys

    def key(self, *parts: str) -> bytes:
        """``{prefix}/{controller}/{parts...}`` as etcd key bytes."""
        return self.base + "/".join(parts).encode()

    def _keys(self, name: str) -> tuple[bytes, bytes]:
        return self.key("spec", name), self.key("status", name)

    def parse_key(self, key: bytes) -> tuple[str, str] | None:
        """``(kind, name)`` for a spec, status or keys key of this controller, else None."""
        if not key.startswith(self.base):
            return None
        kind, sep, name = key[len(self.base):].decode("utf-8", "replace").partition("/")
        if not sep or kind not in ("spec", "status", "keys") or not name or "/" in name:
            return None
        return kind, name

    # connection

    @_counted("connect")
    def connect(self) -> Generator[Deferred[Any], Any, None]:
        """Find a reachable endpoint and the JSON gateway it serves; StoreUnavailable if none."""
        probe = Round(self.reactor, self.members,
                      lambda endpoint: probe_api_prefix(self._http, endpoint),
                      self.timeout, lambda miss: None, HEDGE_AFTER, self._count_miss)
        try:
            api_prefix = yield probe.start()
        except RoundFailed as exc:
            raise StoreUnavailable(f"cannot use etcd: {exc}") from None
        apply_api_prefix(api_prefix)
        self.api_prefix = api_prefix
        self._lease = LeaseApi(self._http, api_prefix)
        log.info("etcd store {controller} connected to {endpoint} ({api})",
                 controller=self.controller, endpoint=self.members.active, api=api_prefix)
        return None

    @property
    def active_endpoint(self) -> str:
        """The member the next call goes to first."""
        return self.members.active

    def _leaderless(self, endpoint: str) -> Deferred:
        """True when the member says it has no leader (its status, asked with the
        hasleader requirement, fails with "no leader")."""
        d = self._http.post(f"{endpoint}{self.api_prefix}/maintenance/status", {})

        def failed(failure: Any) -> bool:
            return bool(failure.check(EtcdHttpError)) and NO_LEADER in failure.value.message
        return d.addCallbacks(lambda _: False, failed)

    def _count_miss(self, miss: Miss) -> None:
        self.metrics.etcd_misses.labels(miss.endpoint, _miss_kind(miss)).inc()

    def _judge(self, op: str, idempotent: bool) -> Callable[[Miss], None]:
        """How a member's failure ends or continues a round (store/failover.py)."""
        def judge(miss: Miss) -> None:
            exc = miss.reason
            if isinstance(exc, (EtcdError, EtcdHttpError)):
                if not _transient(exc):
                    raise StoreError(f"etcd refused {op}: {exc.message}") from None
            elif isinstance(exc, (Failed, StoreError)):
                raise exc  # an answer: the compare failed, or one of ours
            if idempotent or _not_applied(exc):
                return  # the next member
            # a write that may have been applied: retrying it could turn its own
            # success into a Conflict
            raise OutcomeUnknown(
                f"etcd {op}: outcome unknown (sent to {miss.endpoint}, no answer: "
                f"{describe(exc)}); read the function again before retrying") from None
        return judge

    @inlineCallbacks
    def _call(self, op: str, request: Callable[[str], Deferred[Any]],
              idempotent: bool) -> Generator[Deferred[Any], Any, Any]:  # txaioetcd's answers: untyped
        """One round of ``request(endpoint)`` over the members (store/failover.py):
        each at most once, a reader hedged past a silent one; a cancel ends it."""
        if self.api_prefix is None:
            yield self.connect()
        attempt = Round(self.reactor, self.members, request, self.timeout,
                        self._judge(op, idempotent), HEDGE_AFTER if idempotent else None,
                        self._count_miss, self._leaderless)
        try:
            result = yield attempt.start()
        except RoundFailed as exc:
            raise StoreUnavailable(f"etcd {op} failed: {exc}") from None
        return result

    def submit(self, op: str, txn: Transaction, idempotent: bool = False) -> Deferred[Any]:
        """One transaction; txaioetcd.Failed when its compare fails."""
        return self._call(op, lambda e: self._clients[e].submit(txn), idempotent)

    # records

    def _record(self, name: str, spec_kv: KeyValue, status_kv: KeyValue | None) -> FunctionRecord:
        spec = decoded("spec", spec_kv.value, lambda: spec_kv.key)
        if status_kv is None:
            # a spec without status (written by hand): the FSM starts afresh; the first
            # update compares the missing status key's mod revision as 0
            return FunctionRecord(spec, FunctionStatus.initial(name, 0.0),
                                  spec_kv.mod_revision, 0)
        status = decoded("status", status_kv.value, lambda: status_kv.key)
        return FunctionRecord(spec, status, spec_kv.mod_revision,
                              status_kv.mod_revision)

    @_counted("create")
    def create(self, spec: FunctionSpec, status: FunctionStatus,
               fence: Sequence[Any] = ()) -> Generator[Deferred[Any], Any, FunctionRecord]:
        spec_key, status_key = self._keys(spec.name)
        txn = Transaction(compare=[CompCreated(spec_key, "==", 0)] + list(fence),
                          success=[OpSet(spec_key, encode_spec(spec)),
                                   OpSet(status_key, encode_status(status))],
                          failure=[OpGet(spec_key)] + self._fence_reads(fence))
        try:
            try:
                result = yield self.submit("create", txn)
            except OutcomeUnknown:
                current = yield self._settle(spec.name)
                if current is not None:
                    if current.spec == spec:
                        return current  # it was applied
                    raise AlreadyExists(spec.name) from None
                result = yield self.submit("create", txn)  # it was not: once more
        except Failed as failed:
            lost = self._lost_race(spec.name, failed, fence)
            if isinstance(lost, Fenced):
                raise lost from None
            raise AlreadyExists(spec.name) from None
        revision = result.header.revision
        return FunctionRecord(spec, status, revision, revision)

    @inlineCallbacks
    def _settle(self, name: str) -> Generator[Deferred[Any], Any, FunctionRecord | None]:
        """After a write whose answer was lost: the function as it is now (None when
        absent), read on any endpoint; OutcomeUnknown when that read fails too."""
        spec_key, status_key = self._keys(name)
        txn = Transaction(success=[OpGet(spec_key), OpGet(status_key)])
        try:
            result = yield self.submit("settle", txn, idempotent=True)
        except StoreUnavailable as exc:
            raise OutcomeUnknown(f"etcd write to {name}: outcome unknown, and it cannot be "
                                 f"read back ({exc}); read the function before retrying") from None
        spec_range, status_range = result.responses
        if not spec_range.kvs:
            return None
        return self._record(name, spec_range.kvs[0],
                            status_range.kvs[0] if status_range.kvs else None)

    @staticmethod
    def _unchanged(current: FunctionRecord, expected: FunctionRecord) -> bool:
        return (current.spec_revision == expected.spec_revision
                and current.status_revision == expected.status_revision)

    @_counted("get")
    def get(self, name: str) -> Generator[Deferred[Any], Any, FunctionRecord]:
        spec_key, status_key = self._keys(name)
        txn = Transaction(success=[OpGet(spec_key), OpGet(status_key)])
        result = yield self.submit("get", txn, idempotent=True)
        spec_range, status_range = result.responses
        if not spec_range.kvs:
            raise NotFound(name)
        return self._record(name, spec_range.kvs[0],
                            status_range.kvs[0] if status_range.kvs else None)

    @_counted("list")
    def list(self) -> Generator[Deferred[Any], Any, Listing]:
        """Every function at one revision (see etcdlist: after the first, a list reads
        what changed since the one before)."""
        listing = yield self.lists.list()
        return listing

    @_counted("list_page")
    def list_page(self, after: str = "", limit: int = 500, revision: int = 0,
                  prefix: str = "") -> Generator[Deferred[Any], Any, Page]:
        page = yield self.lists.page(after, limit, revision, prefix)
        return page

    def _guard(self, expected: FunctionRecord) -> tuple[bytes, bytes, List[Any]]:
        spec_key, status_key = self._keys(expected.name)
        return spec_key, status_key, [
            CompModified(spec_key, "==", expected.spec_revision),
            CompModified(status_key, "==", expected.status_revision)]

    @staticmethod
    def _fence_reads(fence: Sequence[Any]) -> List[Any]:
        return [OpGet(fence[0].key)] if fence else []

    @staticmethod
    def _lost_race(name: str, failed: Failed, fence: Sequence[Any] = ()) -> StoreError:
        """The compare failed: Fenced when the leader key moved, NotFound when the spec
        is gone, else Conflict."""
        responses = failed.responses or []
        if fence and len(responses) > 1:
            leader = responses[1].kvs[0] if responses[1].kvs else None
            if not all(_holds(comp, leader) for comp in fence):
                return Fenced(f"not written: this node no longer holds the leader key "
                              f"(its holder: {leader.value.decode('utf-8', 'replace') if leader else 'none'})")
        spec_range = responses[0] if responses else None
        return Conflict(name) if spec_range is not None and spec_range.kvs else NotFound(name)

    @_counted("update")
    def update(self, expected: FunctionRecord, spec: FunctionSpec | None = None,
               status: FunctionStatus | None = None,
               fence: Sequence[Any] = ()) -> Generator[Deferred[Any], Any, FunctionRecord]:
        name = expected.name
        spec_key, status_key, compare = self._guard(expected)
        compare += list(fence)
        writes = []
        if spec is not None:
            writes.append(OpSet(spec_key, encode_spec(spec)))
        if status is not None:
            writes.append(OpSet(status_key, encode_status(status)))
        txn = Transaction(compare=compare,
                          success=writes or [OpGet(spec_key), OpGet(status_key)],
                          failure=[OpGet(spec_key)] + self._fence_reads(fence))
        try:
            try:
                result = yield self.submit("update", txn)
            except OutcomeUnknown:
                current = yield self._settle(name)
                if current is None:
                    raise NotFound(name) from None
                if ((spec is None or current.spec == spec)
                        and (status is None or current.status == status)):
                    return current  # it was applied
                if not self._unchanged(current, expected):
                    raise Conflict(name) from None
                result = yield self.submit("update", txn)  # it was not: once more
        except Failed as failed:
            raise self._lost_race(name, failed, fence) from None
        if not writes:
            spec_range, status_range = result.responses
            return self._record(name, spec_range.kvs[0],
                                status_range.kvs[0] if status_range.kvs else None)
        revision = result.header.revision
        return attrs.evolve(
            expected,
            spec=expected.spec if spec is None else spec,
            status=expected.status if status is None else status,
            spec_revision=expected.spec_revision if spec is None else revision,
            status_revision=expected.status_revision if status is None else revision)

    @_counted("delete")
    def delete(self, expected: FunctionRecord,
               fence: Sequence[Any] = ()) -> Generator[Deferred[Any], Any, None]:
        spec_key, status_key, compare = self._guard(expected)
        txn = Transaction(compare=compare + list(fence),
                          success=[OpDel(spec_key), OpDel(status_key),
                                   OpDel(self.key("keys", expected.name))],
                          failure=[OpGet(spec_key)] + self._fence_reads(fence))
        try:
            try:
                yield self.submit("delete", txn)
            except OutcomeUnknown:
                current = yield self._settle(expected.name)
                if current is None:
                    return None  # it was applied
                if not self._unchanged(current, expected):
                    raise Conflict(expected.name) from None
                yield self.submit("delete", txn)  # it was not: once more
        except Failed as failed:
            raise self._lost_race(expected.name, failed, fence) from None
        return None

    @_counted("get_keys")
    def get_keys(self, name: str) -> Generator[Deferred[Any], Any, tuple[FunctionKeys, int]]:
        txn = Transaction(success=[OpGet(self.key("spec", name)), OpGet(self.key("keys", name))])
        result = yield self.submit("get_keys", txn, idempotent=True)
        spec_range, keys_range = result.responses
        if not spec_range.kvs:
            raise NotFound(name)
        if not keys_range.kvs:
            return FunctionKeys(), 0
        kv = keys_range.kvs[0]
        return FunctionKeys.decode(kv.value), kv.mod_revision

    @_counted("put_keys")
    def put_keys(self, name: str, keys: FunctionKeys,
                 expected_revision: int) -> Generator[Deferred[Any], Any, int]:
        spec_key, keys_key = self.key("spec", name), self.key("keys", name)
        txn = Transaction(compare=[CompModified(keys_key, "==", expected_revision),
                                   CompCreated(spec_key, ">", 0)],
                          success=[OpSet(keys_key, keys.encode())],
                          failure=[OpGet(spec_key)])
        try:
            result = yield self.submit("put_keys", txn)
        except Failed as failed:
            raise self._lost_race(name, failed) from None
        return result.header.revision

    @_counted("check")
    def check(self) -> Generator[Deferred[Any], Any, None]:
        """A linearizable read: it needs a quorum (a member's status answers without one)."""
        if self.api_prefix is None:
            yield self.connect()
            return None
        txn = Transaction(success=[OpGet(self.key("leader"))])
        yield self.submit("check", txn, idempotent=True)
        return None

    # plain keys (node registrations, reports)

    def put(self, key: bytes, value: bytes, lease_id: int | None = None) -> Deferred:
        lease = None if lease_id is None else Lease(None, None, 0, lease_id)
        return self.submit("put", Transaction(success=[OpSet(key, value, lease=lease)]), True)

    def put_many(self, items: Sequence[tuple[bytes, bytes | None]],
                 lease_id: int | None = None) -> Deferred:
        """Write (or, where the value is None, delete) several keys in one transaction."""
        lease = None if lease_id is None else Lease(None, None, 0, lease_id)
        ops = [OpDel(key) if value is None else OpSet(key, value, lease=lease)
               for key, value in items]
        return self.submit("put_many", Transaction(success=ops), True)

    def delete_key(self, key: bytes) -> Deferred:
        return self.submit("delete_key", Transaction(success=[OpDel(key)]), True)

    def read_page(self, prefix: bytes, after: bytes, limit: int, revision: int) -> Deferred:
        """``([KeyValue...], more)``: keys under ``prefix`` after ``after`` (from the
        start when empty), at most ``limit``, at ``revision`` (Expired if compacted)."""
        begin = after + b"\0" if after else prefix
        d = self._raw_kvs([(begin, prefix_end(prefix))], limit, revision)
        return d.addCallback(lambda ranges: (ranges[0][0], ranges[0][1]))

    def _raw_kvs(self, bounds: Sequence[tuple[bytes, bytes]], limit: int,
                 revision: int) -> Deferred:
        """``[(kvs, more)]`` of one transaction of range reads, as KeyValues."""
        ops = range_ops(bounds, limit, revision)

        def request(endpoint: str) -> Deferred:
            return self._http.post(f"{endpoint}{self.api_prefix}/kv/txn", {"success": ops})

        def parsed(answer: dict) -> list:
            out = []
            for response in answer.get("responses") or []:
                found = response.get("response_range") or response.get("responseRange") or {}
                out.append(([KeyValue(base64.b64decode(kv.get("key", "")),
                                      base64.b64decode(kv.get("value", "")),
                                      mod_revision=int(kv.get("mod_revision", 0)))
                             for kv in found.get("kvs") or ()], bool(found.get("more"))))
            return out

        def compacted(failure: Any) -> Any:
            failure.trap(StoreError)
            if "compacted" in str(failure.value):
                raise Expired(f"revision {revision} was compacted: {failure.value}")
            return failure
        return self._call("read", request, True).addCallbacks(parsed, compacted)

    def read_prefixes(self, *prefixes: bytes) -> Deferred:
        """``([[KeyValue...] per prefix], revision)`` read at one revision (as plain JSON:
        the leader reads every node's report of every function each pass)."""
        ops = [{"request_range": {"key": b64(p), "range_end": b64(prefix_end(p))}}
               for p in prefixes]

        def request(endpoint: str) -> Deferred:
            return self._http.post(f"{endpoint}{self.api_prefix}/kv/txn", {"success": ops})

        def parsed(answer: dict) -> tuple[list[list[KeyValue]], int]:
            out = []
            for response in answer.get("responses") or []:
                found = response.get("response_range") or response.get("responseRange") or {}
                out.append([KeyValue(base64.b64decode(kv.get("key", "")),
                                     base64.b64decode(kv.get("value", "")),
                                     mod_revision=int(kv.get("mod_revision", 0)))
                            for kv in found.get("kvs") or ()])
            return out, int(answer.get("header", {}).get("revision", 0))
        return self._call("read_prefixes", request, True).addCallback(parsed)

    # watches

    def watch_keys(self, key: bytes, range_end: bytes | None, after_revision: int,
                   on_events: Callable[[List[KeyEvent]], None],
                   on_lost: Callable[[Exception], None]) -> EtcdWatch:
        """A raw resumable watch on ``[key, range_end)`` (the leader election uses it)."""
        if self.api_prefix is None:
            raise StoreError("EtcdStore.connect() must succeed before a watch starts")
        endpoints = self.members.order()
        watch: EtcdWatch

        def lost(reason: Exception) -> None:
            self._watches.discard(watch)
            on_lost(reason)

        watch = EtcdWatch(self.reactor, self._watch_agent, endpoints, self.api_prefix, key,
                          range_end, after_revision, on_events, lost,
                          connect_timeout=self.timeout,
                          on_reconnect=self.metrics.watch_reconnects.inc)
        self._watches.add(watch)
        return watch.start()

    def watch(self, start_revision: int, on_changes: Callable[[Sequence[Change]], None],
              on_lost: Callable[[Exception], None]) -> "_StoreWatch":
        """Changes to this controller's functions after ``start_revision``, in order."""
        def on_events(events: list[KeyEvent]) -> None:
            changes = []
            for event in events:
                parsed = self.parse_key(event.key)
                if parsed is None:
                    continue  # the leader key, or a stranger under our prefix
                kind, name = parsed
                value: FunctionSpec | FunctionStatus | FunctionKeys | None = None
                if event.value is not None:
                    try:
                        if kind == "spec":
                            value = decode_spec(event.value)
                        elif kind == "status":
                            value = decode_status(event.value)
                        else:
                            value = FunctionKeys.decode(event.value)
                    except Exception:
                        log.failure("skipping unreadable {kind} of {name} at revision {revision}",
                                    kind=kind, name=name, revision=event.mod_revision)
                        continue
                # parse_key's kind is spec, status or keys (Change's Literal)
                changes.append(Change(name, kind, value,  # type: ignore[arg-type]
                                      event.mod_revision))
            if changes:
                on_changes(changes)

        watch = self.watch_keys(self.base, prefix_end(self.base), start_revision,
                                on_events, on_lost)
        return _StoreWatch(self, watch)

    # leases (leader election)

    def _lease_api(self) -> LeaseApi:
        if self._lease is None:  # made by connect()
            raise StoreUnavailable("the etcd store is not connected yet")
        return self._lease

    def lease_grant(self, ttl: int) -> Deferred:
        """``(lease_id, granted_ttl)``."""
        return self._call("lease_grant", lambda e: self._lease_api().grant(e, ttl), False)

    def lease_keepalive(self, lease_id: int) -> Deferred:
        """The remaining TTL; 0 when the lease has expired."""
        return self._call("lease_keepalive",
                          lambda e: self._lease_api().keepalive(e, lease_id), True)

    def lease_revoke(self, lease_id: int) -> Deferred:
        return self._call("lease_revoke",
                          lambda e: self._lease_api().revoke(e, lease_id), True)

    def close(self) -> Deferred:
        """Stop every watch and drop pooled connections."""
        for watch in list(self._watches):
            watch.cancel()
        self._watches.clear()
        closing = [self._http.close()]
        closing += [client._pool.closeCachedConnections() for client in self._clients.values()]
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


def _pool(reactor: IFullReactor) -> HTTPConnectionPool:
    """Persistent connections to one endpoint: as many kept as writes run at once (the
    reconciler has 16 in flight, the session 4); Twisted keeps 2 by default, so every
    other request opened and closed a connection of its own."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = POOLED_CONNECTIONS
    pool.cachedConnectionTimeout = 60
    return pool


def _holds(comp: Any, kv: KeyValue | None) -> bool:
    """Whether the leader key ``kv`` still satisfies one fence comparison."""
    if kv is None:
        return False
    if isinstance(comp, CompModified):
        return kv.mod_revision == comp.mod_revision
    if isinstance(comp, CompValue):
        return kv.value == comp.value
    return True


@attrs.define
class _StoreWatch:
    """The WatchHandle of EtcdStore.watch."""

    store: EtcdStore
    watch: EtcdWatch

    @property
    def connected(self) -> bool:
        return self.watch.connected

    @property
    def last_revision(self) -> int:
        return self.watch.last_revision

    def cancel(self) -> None:
        self.watch.cancel()
        self.store._watches.discard(self.watch)
