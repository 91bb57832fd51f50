"""What a gate worker asks of the main process: upstream leases and queued calls.

The process provider counts each replica's in-flight requests and starts replicas
from zero; that state lives in the main process, once for the node. A worker's
``RemoteProvider.acquire`` asks for a lease over the control channel and the main
answers with the replica's address (or an error with Retry-After); ``release`` tells
it the request is over. If the main process is gone or slow, the request fails with
503 and Retry-After (``NoCapacity``) within ``timeout``, never hangs. A replica that
dies under a request is reported (``lost``) so the request ends at once, as in a
one-process gate.

``RemoteQueue`` is the gate's ``Enqueuer`` in a worker: the call (body included) goes
to the main process, which stores it in JetStream and answers; the 202 is sent only
after that answer, as in a one-process gate.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred

from faastwist.gate.asynccall import QueuedCall, QueueFull, QueueUnavailable
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import NoCapacity, Upstream
from faastwist.queue.policy import CallbackRules, parse_networks, refuse_callback_url
from faastwist.workers.channel import Calls, ChannelDown, Message, ident_of
from faastwist.workers.setup import QueueAccess

#: Retry-After when the main process cannot be asked
RETRY_AFTER_DOWN = 1


def upstream_fields(upstream: Upstream) -> list[Any]:
    return [upstream.scheme, upstream.host, upstream.port, upstream.host_header]


def parse_upstream(value: Any) -> Upstream:
    if (not isinstance(value, list) or len(value) != 4 or value[0] not in ("http", "https")
            or not isinstance(value[1], str) or isinstance(value[2], bool)
            or not isinstance(value[2], int) or not isinstance(value[3], str)):
        raise ValueError(f"upstream must be [scheme, host, port, host header], got {value!r}")
    return Upstream(*value)


class RemoteLease:
    """A lease the main process holds for this worker's request."""

    __slots__ = ("upstream", "on_lost", "ident", "_provider")

    def __init__(self, provider: "RemoteProvider", ident: int, upstream: Upstream) -> None:
        self.upstream = upstream
        self.ident = ident
        self.on_lost: Callable[[str], None] | None = None
        self._provider: RemoteProvider | None = provider

    def release(self) -> None:
        provider, self._provider = self._provider, None
        self.on_lost = None
        if provider is not None:
            provider.released(self)

    def notify_lost(self, callback: Callable[[str], None]) -> None:
        self.on_lost = callback

    def lost(self, why: str) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(why)


class RemoteProvider:
    """``acquire`` through the main process (the gate calls nothing else)."""

    kind = "remote"

    def __init__(self, calls: Calls, timeout: float) -> None:
        self.calls = calls
        self.timeout = timeout
        self.leases: dict[int, RemoteLease] = {}
        self._upstreams: dict[tuple[Any, ...], Upstream] = {}  # one object per address

    def acquire(self, spec: FunctionSpec) -> Deferred[RemoteLease]:
        d = self.calls.call("acquire", self.timeout, fn=spec.name)
        return d.addCallbacks(self._leased, self._down, errbackArgs=(spec.name,))

    def _leased(self, reply: Message) -> RemoteLease:
        if "lease" not in reply:
            raise NoCapacity(str(reply.get("message") or "no upstream"),
                             int(reply.get("retryAfter") or RETRY_AFTER_DOWN))
        fields = tuple(reply.get("upstream") or ())
        upstream = self._upstreams.get(fields)
        if upstream is None:
            upstream = self._upstreams[fields] = parse_upstream(list(fields))
        lease = RemoteLease(self, int(reply["lease"]), upstream)
        self.leases[lease.ident] = lease
        return lease

    def _down(self, failure: Any, name: str) -> Any:
        failure.trap(ChannelDown)
        raise NoCapacity(f"no upstream for function {name}: the node's main process did "
                         f"not answer ({failure.getErrorMessage()})", RETRY_AFTER_DOWN)

    def released(self, lease: RemoteLease) -> None:
        if self.leases.pop(lease.ident, None) is not None:
            self.calls.channel.send({"op": "release", "lease": lease.ident})

    def lost(self, message: Message) -> None:
        """The main process saw the lease's replica die."""
        lease = self.leases.get(ident_of(message, "lease"))
        if lease is not None:
            lease.lost(str(message.get("why") or "the replica exited"))

    def channel_lost(self) -> None:
        """The main process is gone: its leases are void (releasing sends nothing)."""
        self.leases.clear()


def call_to_message(call: QueuedCall) -> dict[str, Any]:
    fields = attrs.asdict(call)
    fields["body"] = base64.b64encode(call.body).decode("ascii")
    fields["headers"] = [list(h) for h in call.headers]
    return fields


def call_from_message(fields: Any) -> QueuedCall:
    """The call a worker sent; ValueError (naming the field) when it is malformed."""
    if not isinstance(fields, dict):
        raise ValueError("call must be an object")
    try:
        body = base64.b64decode(fields["body"], validate=True)
        headers = tuple((str(n), str(v)) for n, v in fields["headers"])
        return QueuedCall(function=str(fields["function"]), call_id=str(fields["call_id"]),
                          method=str(fields["method"]), target=str(fields["target"]),
                          headers=headers, client_ip=str(fields["client_ip"]), body=body,
                          callback=None if fields["callback"] is None else str(fields["callback"]),
                          enqueued=float(fields["enqueued"]))
    except KeyError as exc:
        raise ValueError(f"call.{exc.args[0]} is missing") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"call is malformed: {exc}") from None


class RemoteQueue:
    """The gate's ``Enqueuer`` in a worker: calls are stored by the main process."""

    def __init__(self, calls: Calls, max_body_size: int, timeout: float,
                 rules: CallbackRules) -> None:
        self.calls = calls
        self.max_body_size = max_body_size
        self.timeout = timeout
        self.rules = rules

    @classmethod
    def from_setup(cls, calls: Calls, setup: QueueAccess) -> "RemoteQueue":
        rules = CallbackRules(parse_networks(list(setup.callback_allow)),
                              frozenset(setup.node_ports), frozenset(setup.local_addresses))
        return cls(calls, setup.max_body_size, setup.timeout, rules)

    def check_callback(self, url: str) -> None:
        """The queue's own check (a literal address the rules forbid is refused)."""
        refuse_callback_url(url, self.rules)

    def submit(self, call: QueuedCall) -> Deferred[Any]:
        d = self.calls.call("enqueue", self.timeout, call=call_to_message(call))

        def answered(reply: Message) -> None:
            if not reply.get("ok"):
                message = str(reply.get("message") or "not stored")
                code, retry_after = reply.get("code"), reply.get("retryAfter")
                if code in (429, 507) and type(retry_after) is int and 0 <= retry_after <= 3600:
                    raise QueueFull(code, message, retry_after)
                raise QueueUnavailable(message)

        def down(failure: Any) -> None:
            failure.trap(ChannelDown)
            raise QueueUnavailable(f"the node's main process did not answer "
                                   f"({failure.getErrorMessage()})")
        return d.addCallbacks(answered, down)
