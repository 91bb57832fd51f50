"""POSTing a call's answer to its X-Callback-Url, safely.

The host is resolved once (in a thread, bounded), every address it resolves to is
checked against the callback rules (policy.check_target: never link-local or cloud
metadata addresses, never this node's admin, etcd or NATS ports, only the allow-list
when one is set), and the connection goes to the address that was checked: a DNS
answer that changes between the check and the connection (DNS rebinding) cannot
redirect the callback. HTTPS still verifies the certificate against the host name.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from faastwist.gate.wire import HOP_BY_HOP
from faastwist.queue.messages import Outcome
from faastwist.queue.policy import (
    NO_ANSWER,
    CallbackRefused,
    CallbackRules,
    check_target,
    split_callback_url,
)
from faastwist.util.bodyproducer import BytesProducer

#: Response headers of the function that are not passed on to the callback.
_DROPPED = {h.decode() for h in HOP_BY_HOP} | {"content-length", "transfer-encoding",
                                                "x-call-id", "x-function-name",
                                                "x-function-status", "x-duration-seconds"}


Resolver = Callable[[str, int], Iterable[Any]]


def _getaddrinfo(host: str, port: int) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


@implementer(IAgentEndpointFactory)
class _Pinned:
    """Connects to the checked address, whatever the URL's host resolves to now; the
    rules are applied again here, where the connection is made."""

    def __init__(self, reactor: Any, address: str, timeout: float,
                 rules: CallbackRules) -> None:
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.rules = rules

    def endpointForURI(self, uri: Any) -> Any:
        check_target(self.address, uri.port, self.rules)
        kind = TCP6ClientEndpoint if ":" in self.address else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = kind(self.reactor, self.address, uri.port,
                                               timeout=self.timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(uri.host.decode("idna")), endpoint)
        return endpoint


def callback_headers(call_id: str, function: str, outcome: Outcome) -> Headers:
    headers = Headers()
    for name, value in outcome.headers:
        if name.lower() not in _DROPPED:
            headers.addRawHeader(name, value)
    headers.setRawHeaders("X-Call-Id", [call_id])
    headers.setRawHeaders("X-Function-Name", [function])
    headers.setRawHeaders("X-Function-Status", [str(outcome.status)])
    headers.setRawHeaders("X-Duration-Seconds", [f"{outcome.duration:.6f}"])
    headers.setRawHeaders("X-Faas-Attempts", [str(outcome.attempts)])
    if outcome.reason:
        headers.setRawHeaders("X-Faas-Reason", [outcome.reason])
    return headers


class CallbackSender:
    """Delivers callbacks; ``send`` fires with the HTTP status (NO_ANSWER when there was
    none) or fails with CallbackRefused."""

    def __init__(self, reactor: Any, rules: CallbackRules, timeout: float,
                 resolver: Resolver = _getaddrinfo) -> None:
        self.reactor = reactor
        self.rules = rules
        self.timeout = timeout
        #: getaddrinfo's shape: (host, port) -> [(family, type, proto, name, sockaddr)]
        self.resolver = resolver
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def resolve(self, url: str) -> tuple[str, int]:
        """The checked address and port for ``url`` (CallbackRefused otherwise)."""
        scheme, host, port = split_callback_url(url)

        resolver = self.resolver

        def lookup() -> list[str]:
            return [str(info[4][0]) for info in resolver(host, port)]

        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), lookup)
        d.addTimeout(self.timeout, self.reactor)
        try:
            addresses = await d
        except socket.gaierror as exc:
            raise CallbackRefused(f"cannot resolve {host}: {exc.strerror}") from None
        if not addresses:
            raise CallbackRefused(f"{host} has no address")
        for address in addresses:  # every one: a mixed answer is refused outright
            check_target(address, port, self.rules)
        return addresses[0], port

    async def send(self, url: str, call_id: str, function: str, outcome: Outcome,
                   body: bytes) -> int:
        try:
            address, _ = await self.resolve(url)
        except CallbackRefused:
            raise
        except Exception:
            return NO_ANSWER  # the resolver timed out or failed for now: retried
        pinned = _Pinned(self.reactor, address, self.timeout, self.rules)
        agent = Agent.usingEndpointFactory(self.reactor, pinned, self.pool)
        d: Deferred[Any] = agent.request(b"POST", url.encode("ascii"),
                                         callback_headers(call_id, function, outcome),
                                         BytesProducer(body))
        d.addTimeout(self.timeout, self.reactor)
        try:
            response = await d
        except CallbackRefused:
            raise
        except Exception:
            return NO_ANSWER  # refused, reset, timed out, TLS failed: retried
        read = readBody(response)
        read.addTimeout(self.timeout, self.reactor)
        try:
            await read
        except Exception:
            pass  # the status is what counts; a body cut short does not undo it
        return int(response.code)

    def close(self) -> Deferred[Any]:
        return self.pool.closeCachedConnections()
