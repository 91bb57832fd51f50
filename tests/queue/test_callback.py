"""The callback sender against a real HTTP receiver on loopback: every resolved address
is checked (not only the first), the connection goes to the checked address (DNS
rebinding cannot redirect it), and the rules are applied again where it connects."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from faastwist.queue.callback import CallbackSender, _Pinned
from faastwist.queue.messages import Outcome
from faastwist.queue.policy import CallbackRefused, CallbackRules, parse_networks

OUTCOME = Outcome(200, 1, 0.01, (("x-fn", "yes"),))


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bytes, bytes, bytes]] = []

    def render_POST(self, request) -> bytes:
        self.got.append((request.getHeader(b"host"), request.getHeader(b"x-call-id"),
                         request.content.read()))
        return b"ok"


@pytest.fixture
def receiver():
    resource = Receiver()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


def resolver(*answers: list[str]):
    """getaddrinfo's shape, answering each lookup with the next list of addresses."""
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int):
        asked.append((host, port))
        addresses = answers[min(len(asked), len(answers)) - 1]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]
    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


LOOPBACK_ALLOWED = CallbackRules(allow=parse_networks(["127.0.0.1/32"]),
                                 node_ports=frozenset({2381}))


@pytest.mark.parametrize("addresses, refused", [
    (["203.0.113.5", "127.0.0.1"], "127.0.0.1"),           # the second of two
    (["203.0.113.5", "203.0.113.6", "::1"], "::1"),        # the last of three
    (["::ffff:127.0.0.1", "203.0.113.5"], "127.0.0.1"),    # IPv4-mapped loopback
    (["203.0.113.5", "0.0.0.0"], "0.0.0.0"),
    (["203.0.113.5", "fe80::1%eth0"], "fe80::1"),
    (["203.0.113.5", "169.254.0.9"], "169.254.0.9"),
])
@pytest_twisted.ensureDeferred
async def test_every_resolved_address_is_checked(addresses, refused) -> None:
    sender = CallbackSender(reactor, CallbackRules(), 2.0, resolver(addresses))
    with pytest.raises(CallbackRefused, match=f"callbacks to {refused} "):
        await sender.send("http://hook.example/x", "c1", "fn", OUTCOME, b"body")


@pytest_twisted.ensureDeferred
async def test_a_name_resolving_to_loopback_is_refused_with_the_real_resolver() -> None:
    sender = CallbackSender(reactor, CallbackRules(), 2.0)
    with pytest.raises(CallbackRefused, match="loopback"):
        await sender.send("http://localhost:9/x", "c1", "fn", OUTCOME, b"")


@pytest_twisted.ensureDeferred
async def test_the_connection_goes_to_the_checked_address_resolved_once(receiver) -> None:
    """DNS rebinding: the first answer (allowed) is checked and connected to; a second
    lookup would answer another address, and none is made."""
    resource, port = receiver
    resolve = resolver(["127.0.0.1"], ["10.66.66.66"])
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, resolve)
    try:
        status = await sender.send(f"http://hook.example:{port}/x", "c1", "fn", OUTCOME,
                                   b"the answer")
    finally:
        await sender.close()
    assert status == 200
    assert resource.got == [(f"hook.example:{port}".encode(), b"c1", b"the answer")]
    assert resolve.asked == [("hook.example", port)]


@pytest_twisted.ensureDeferred
async def test_an_allowed_and_a_refused_address_together_are_refused(receiver) -> None:
    _, port = receiver
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0,
                            resolver(["127.0.0.1", "127.0.0.2"]))
    with pytest.raises(CallbackRefused, match="127.0.0.2"):
        await sender.send(f"http://hook.example:{port}/x", "c1", "fn", OUTCOME, b"")


def test_the_rules_apply_where_the_connection_is_made() -> None:
    from twisted.web.client import URI

    pinned = _Pinned(reactor, "127.0.0.1", 1.0, CallbackRules())
    with pytest.raises(CallbackRefused, match="127.0.0.1"):
        pinned.endpointForURI(URI.fromBytes(b"http://hook.example:8080/x"))
    allowed = _Pinned(reactor, "127.0.0.1", 1.0, LOOPBACK_ALLOWED)
    assert allowed.endpointForURI(URI.fromBytes(b"http://hook.example:8080/x")) is not None
    with pytest.raises(CallbackRefused, match="own admin"):
        allowed.endpointForURI(URI.fromBytes(b"http://hook.example:2381/x"))
