"""One reconciler per controller across nodes: a lease-held etcd key elects the leader.

A node campaigns by creating ``{prefix}/{controller}/leader`` (value: its node id)
only if absent, bound to a lease it keeps alive every ttl/3. Leadership is dropped at
the first keep-alive that fails or finds the lease gone, and ``is_leader()`` also turns
false by itself when the lease may have run out, so a node cut off from etcd stops
acting as leader before another node can take over. Followers watch the key and
campaign again as soon as it disappears (a stopped leader revokes its lease, which
deletes the key at once; a crashed one's lease expires after ttl).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generator, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.internet.interfaces import IReactorTime
from txaioetcd import CompCreated, CompModified, CompValue, Failed, OpGet, OpSet, Transaction
from txaioetcd._lease import Lease

from faastwist.metrics import Metrics
from faastwist.store.etcd import EtcdStore
from faastwist.store.etcdwatch import EtcdWatch, KeyEvent
from faastwist.store.memory import MemoryFence
from faastwist.util.timers import NamedTimers

log = Logger()


class NotLeader(Exception):
    """A leader-only step was about to run on a node that does not (or no longer) lead."""


class Leadership(Protocol):
    """What the node, the reconciler, the Function watch and /apis/v2/faas/info use of a
    leader election: the etcd one (``LeaderElection``) or a single node's
    (``AlwaysLeader``); tests/store/test_leader_contract.py holds both to it."""

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None] | None: ...

    def is_leader(self) -> bool:
        """Whether this node may act as leader now."""

    def fence(self) -> list[Any]:
        """The conditions the store checks on a leader's write (NotLeader when this
        node does not lead)."""

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(is_leader)`` on every change of leadership."""

    def read_holder(self) -> Deferred[str | None]:
        """Who leads now (None: nobody)."""


class AlwaysLeader(Service):
    """The leader of a node alone on a ``MemoryStore``: it leads while it runs.

    Each start is a new term; its fence (``MemoryFence``) holds for that term only, so a
    write fenced before a stop is refused as etcd refuses one after the lease went."""

    name = "leader-election"

    def __init__(self, node_id: str, metrics: Metrics | None = None) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.term = 0   # 0: not leading; each start a new one
        self._terms = 0
        self._listeners: list[Callable[[bool], None]] = []

    def startService(self) -> None:
        Service.startService(self)
        self._terms += 1
        self.term = self._terms
        self._changed(True)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self.term = 0
        self._changed(False)
        return succeed(None)

    def _changed(self, leader: bool) -> None:
        if self.metrics is not None:
            self.metrics.leader.set(1 if leader else 0)
        for listener in list(self._listeners):
            try:
                listener(leader)
            except Exception:
                log.failure("leadership listener failed")

    def is_leader(self) -> bool:
        return bool(self.running)

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Called with True at start and False at stop (the only changes)."""
        self._listeners.append(listener)

    def read_holder(self) -> Deferred[str | None]:
        return succeed(self.node_id if self.running else None)

    def _now(self) -> tuple[int, str | None]:
        return self.term, (self.node_id if self.running else None)

    def fence(self) -> list[Any]:
        if not self.is_leader():
            raise NotLeader(f"{self.node_id} is not the leader (holder: None)")
        return [MemoryFence(self.term, self._now)]


class LeaderElection(Service):
    """Campaigns for the controller's leader key on ``store`` as ``node_id``."""

    name = "leader-election"

    def __init__(self, reactor: IReactorTime, store: EtcdStore, node_id: str, ttl: float = 10,
                 metrics: Metrics | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"leader ttl must be positive, got {ttl}")
        self.reactor = reactor
        self.store = store
        self.node_id = node_id
        self.ttl = ttl
        self.metrics = metrics if metrics is not None else store.metrics
        self.key = store.key("leader")
        self.holder: str | None = None  # the node id in the key, as last seen
        self.fence_revision = 0  # the mod revision of our write of the key while we lead
        self._leader = False
        self._valid_until = 0.0
        self._lease_id: int | None = None
        self._granted_ttl = max(1, math.ceil(ttl))
        self._watch: EtcdWatch | None = None
        self._timers = NamedTimers(reactor)
        self._campaigning = False
        self._again = False
        self._failures = 0
        self._listeners: list[Callable[[bool], None]] = []

    # public

    def is_leader(self) -> bool:
        """True while this node holds the key and its lease cannot have expired yet.

        The first caller to see the lease's time run out steps this node down, so the
        listeners and the ``faastwist_leader`` gauge never say "leader" while this says
        not (a reactor that ran late could otherwise answer False here long before the
        expiry timer fires); the expiry timer does the same when nobody asks."""
        if self._leader and self.reactor.seconds() >= self._valid_until:
            self._step_down("its lease may have expired: no keep-alive answer in time")
        return self._leader

    def add_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(is_leader)`` on every change of leadership."""
        self._listeners.append(listener)

    def read_holder(self) -> Deferred[str | None]:
        """Who holds the leader key now (None: nobody), by a quorum read: without a
        quorum it fails, and nobody can hold the key longer than its lease. ``holder``
        is left alone (the watch orders its updates; a read could overtake one)."""
        d = self.store.submit("leader_read", Transaction(success=[OpGet(self.key)]), True)

        def holder(result: Any) -> str | None:
            kvs = result.responses[0].kvs
            return kvs[0].value.decode("utf-8", "replace") if kvs else None
        return d.addCallback(holder)

    def fence(self) -> list[Any]:
        """The comparisons that make a write conditional on this node still leading:
        the key holds our id *and* was last written by our campaign (a later holder,
        even one with our id after a restart, wrote it at a newer revision)."""
        if not self.is_leader():
            raise NotLeader(f"{self.node_id} is not the leader (holder: {self.holder})")
        return [CompModified(self.key, "==", self.fence_revision),
                CompValue(self.key, "==", self.node_id.encode())]

    def startService(self) -> None:
        Service.startService(self)
        self._campaign()

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        """Give up leadership at once (revoking the lease deletes the key)."""
        Service.stopService(self)
        self._timers.cancel_all()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._set_leader(False)
        lease, self._lease_id = self._lease_id, None
        if lease is not None:
            try:
                yield self.store.lease_revoke(lease)
            except Exception as exc:
                log.warn("could not revoke leader lease {lease}: {error}; it expires in "
                         "{ttl}s", lease=lease, error=str(exc), ttl=self._granted_ttl)

    # campaign

    def _campaign(self) -> None:
        self._timers.fired("campaign")
        if not self.running or self._leader:
            return
        if self._campaigning:
            self._again = True  # the key changed while a campaign was under way
            return
        self._campaigning = True
        self._again = False
        d = self._try_once()
        d.addErrback(self._campaign_failed)
        d.addBoth(self._campaign_done)

    def _campaign_done(self, _: Any) -> None:
        self._campaigning = False
        if self._again and self.running and not self._leader and "campaign" not in self._timers:
            self._timers.later("campaign", 0, self._campaign)
        self._again = False

    @inlineCallbacks
    def _try_once(self) -> Generator[Deferred[Any], Any, None]:
        sent = self.reactor.seconds()  # the lease's clock starts no earlier than this
        lease_id, granted = yield self.store.lease_grant(self._granted_ttl)
        if not self.running:
            yield self.store.lease_revoke(lease_id)
            return
        txn = Transaction(
            compare=[CompCreated(self.key, "==", 0)],
            success=[OpSet(self.key, self.node_id.encode(), lease=Lease(None, None, granted, lease_id))],
            failure=[OpGet(self.key)])
        try:
            result = yield self.store.submit("campaign", txn)
        except Failed as failed:
            # someone leads (the read ran in the same txn, so it sees that holder)
            kvs = failed.responses[0].kvs if failed.responses else []
            holder = kvs[0].value.decode("utf-8", "replace") if kvs else None
            if holder == self.node_id and kvs:
                # our own id from before an outage or a restart: take the key back now
                # instead of waiting for the old lease to run out
                result = yield self._take_back(kvs[0], lease_id, granted)
                if result is not None:
                    self._won(result, lease_id, granted, sent, "took back its leader key")
                    return
            if holder != self.holder:
                log.info("{node} follows {holder} as leader of {controller}",
                         node=self.node_id, holder=holder, controller=self.store.controller)
            self.holder = holder
            self._failures = 0
            self._ensure_watch(failed.header.revision)
            yield self.store.lease_revoke(lease_id)
            return
        self._won(result, lease_id, granted, sent, "is the leader")

    def _take_back(self, kv: Any, lease_id: int, granted: int) -> Deferred:
        """Rebind the key holding our id to our new lease, if nobody changed it meanwhile."""
        txn = Transaction(
            compare=[CompModified(self.key, "==", kv.mod_revision),
                     CompValue(self.key, "==", self.node_id.encode())],
            success=[OpSet(self.key, self.node_id.encode(),
                           lease=Lease(None, None, granted, lease_id))])
        d = self.store.submit("campaign", txn)
        d.addErrback(lambda f: f.trap(Failed) and None)
        return d

    def _won(self, result: Any, lease_id: int, granted: int, sent: float, how: str) -> None:
        if not self.running:
            self.store.lease_revoke(lease_id).addErrback(lambda _: None)
            return
        self._lease_id, self._granted_ttl = lease_id, granted
        self._valid_until = sent + granted
        self.fence_revision = result.header.revision
        self.holder = self.node_id
        self._failures = 0
        self._set_leader(True)
        self._ensure_watch(result.header.revision)
        self._timers.later("keepalive", granted / 3.0, self._keepalive)
        self._expire_at(self._valid_until)
        log.info("{node} {how} of {controller} (lease {lease}, ttl {ttl}s)", how=how,
                 node=self.node_id, controller=self.store.controller, lease=lease_id, ttl=granted)

    def _campaign_failed(self, failure: Any) -> None:
        if not self.running:
            return
        delay = self._backoff()
        log.warn("{node}: leader campaign failed ({error}); again in {delay}s",
                 node=self.node_id, error=failure.getErrorMessage(), delay=delay)
        self._timers.later("campaign", delay, self._campaign)

    def _backoff(self) -> float:
        self._failures += 1
        return min(self._granted_ttl / 3.0, 0.1 * 2 ** (self._failures - 1))

    # holding

    def _keepalive(self) -> None:
        self._timers.fired("keepalive")
        lease = self._lease_id
        if not self._leader or lease is None:
            return
        sent = self.reactor.seconds()
        d = self.store.lease_keepalive(lease)

        def refreshed(remaining: int) -> None:
            if lease != self._lease_id or not self._leader:
                return
            if remaining <= 0:
                self._step_down("the lease expired")
                return
            self._valid_until = sent + remaining
            self._timers.later("keepalive", self._granted_ttl / 3.0, self._keepalive)
            self._expire_at(self._valid_until)

        def failed(failure: Any) -> None:
            if lease == self._lease_id and self._leader:
                self._step_down(f"keep-alive failed: {failure.getErrorMessage()}")
        d.addCallbacks(refreshed, failed)

    def _step_down(self, reason: str) -> None:
        log.warn("{node} is no longer the leader of {controller}: {reason}",
                 node=self.node_id, controller=self.store.controller, reason=reason)
        self._timers.cancel("keepalive")
        self._timers.cancel("expiry")
        self._set_leader(False)
        lease, self._lease_id = self._lease_id, None
        if lease is not None:
            # so that the key goes now rather than at expiry; fails quietly when etcd is away
            self.store.lease_revoke(lease).addErrback(lambda _: None)
        self._timers.later("campaign", self._backoff(), self._campaign)

    def _expire_at(self, deadline: float) -> None:
        """Step down when the lease's time runs out without a keep-alive answer."""
        def expired() -> None:
            self._timers.fired("expiry")
            self.is_leader()
        self._timers.later("expiry", max(0.0, deadline - self.reactor.seconds()), expired)

    def _set_leader(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        if not leader:
            self._valid_until = 0.0
        self.metrics.leader.set(1 if leader else 0)
        for listener in list(self._listeners):
            try:
                listener(leader)
            except Exception:
                log.failure("leadership listener failed")

    # watching the key

    def _ensure_watch(self, revision: int) -> None:
        if self._watch is None and self.running:
            self._watch = self.store.watch_keys(self.key, None, revision, self._key_changed,
                                                self._watch_lost)

    def _key_changed(self, events: list[KeyEvent]) -> None:
        last = events[-1]
        holder = None if last.value is None else last.value.decode("utf-8", "replace")
        if holder is not None and holder != self.holder and holder != self.node_id:
            log.info("{node} follows {holder} as leader of {controller}", node=self.node_id,
                     holder=holder, controller=self.store.controller)
        self.holder = holder
        if self._leader and self.holder != self.node_id:
            self._step_down("the leader key was deleted" if self.holder is None
                            else f"{self.holder} holds the leader key")
        elif self.holder is None and not self._leader:
            self._campaign()

    def _watch_lost(self, reason: Exception) -> None:
        self._watch = None
        if not self.running:
            return
        if not self._leader:
            # whatever happened meanwhile, a campaign finds out and restarts the watch
            self._timers.later("campaign", 0, self._campaign)
            return
        d = self.store.submit("leader_read", Transaction(success=[OpGet(self.key)]), True)

        def reread(result: Any) -> None:
            kvs = result.responses[0].kvs
            self._key_changed([KeyEvent(self.key, kvs[0].value if kvs else None,
                                        result.header.revision)])
            self._ensure_watch(result.header.revision)

        def failed(failure: Any) -> None:
            self._step_down(f"cannot read the leader key: {failure.getErrorMessage()}")
        d.addCallbacks(reread, failed)

