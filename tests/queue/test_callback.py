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

from faastwist.queue.callback import CallbackSender, _Pinned, callback_headers
from faastwist.queue.messages import Outcome
from faastwist.queue.policy import NO_ANSWER, CallbackRefused, CallbackRules, parse_networks

OUTCOME = Outcome(200, 1, 0.01, (("x-fn", "yes"),))


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[bytes, bytes, bytes]] = []
        self.headers: list = []
        self.clients: list[int] = []
        self.status = 200

    def render_POST(self, request) -> bytes:
        self.got.append((request.getHeader(b"host"), request.getHeader(b"x-call-id"),
                         request.content.read()))
        self.clients.append(request.getClientAddress().port)
        self.headers.append(request.requestHeaders)
        request.setResponseCode(self.status)
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


DEAD = Outcome(503, 5, 1.25, (("x-fn", "yes"), ("Connection", "x-secret"), ("x-secret", "1"),
                              ("Content-Length", "99"), ("X-Call-Id", "forged"),
                              ("X-Function-Status", "200")),
               reason="no attempts left (5 of 5)")


def test_a_dead_letter_s_callback_says_why_and_the_function_cannot_forge_ours() -> None:
    headers = callback_headers("c1", "fn", DEAD)
    assert headers.getRawHeaders("X-Faas-Reason") == ["no attempts left (5 of 5)"]
    assert headers.getRawHeaders("X-Call-Id") == ["c1"]
    assert headers.getRawHeaders("X-Function-Name") == ["fn"]
    assert headers.getRawHeaders("X-Function-Status") == ["503"]
    assert headers.getRawHeaders("X-Duration-Seconds") == ["1.250000"]
    assert headers.getRawHeaders("X-Faas-Attempts") == ["5"]
    assert headers.getRawHeaders("x-fn") == ["yes"]
    for dropped in ("Connection", "Content-Length"):
        assert not headers.hasHeader(dropped), dropped
    # a call that finished has no reason to give
    assert not callback_headers("c1", "fn", OUTCOME).hasHeader("X-Faas-Reason")


@pytest_twisted.ensureDeferred
async def test_the_dead_letter_s_reason_reaches_the_receiver(receiver) -> None:
    resource, port = receiver
    resource.status = 204
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, resolver(["127.0.0.1"]))
    try:
        status = await sender.send(f"http://hook.example:{port}/x", "c1", "fn", DEAD,
                                   b"last answer")
    finally:
        await sender.close()
    assert status == 204
    [headers] = resource.headers
    assert headers.getRawHeaders(b"x-faas-reason") == [b"no attempts left (5 of 5)"]
    assert headers.getRawHeaders(b"x-function-status") == [b"503"]
    assert resource.got[0][2] == b"last answer"


@pytest_twisted.ensureDeferred
async def test_no_answer_and_lookups_that_fail() -> None:
    from faastwist.util.ports import free_port

    closed = free_port()
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, resolver(["127.0.0.1"]))
    assert await sender.send(f"http://hook.example:{closed}/x", "c1", "fn", OUTCOME,
                             b"") == NO_ANSWER   # refused: retried later

    def unknown(host: str, port: int):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, unknown)
    with pytest.raises(CallbackRefused) as refused:
        await sender.send("http://nowhere.example/x", "c1", "fn", OUTCOME, b"")
    assert str(refused.value) == "cannot resolve nowhere.example: Name or service not known"
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, resolver([]))
    with pytest.raises(CallbackRefused) as refused:
        await sender.send("http://empty.example/x", "c1", "fn", OUTCOME, b"")
    assert str(refused.value) == "empty.example has no address"

    def broken(host: str, port: int):
        raise OSError("resolver crashed")
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, broken)
    assert await sender.send("http://hook.example/x", "c1", "fn", OUTCOME, b"") == NO_ANSWER


@pytest.mark.parametrize("name", ["Connection", "Keep-Alive", "Transfer-Encoding",
                                  "Content-Length", "X-Call-Id", "X-Function-Name",
                                  "X-Function-Status", "X-Duration-Seconds", "Upgrade",
                                  "Proxy-Authenticate", "TE", "Trailer"])
def test_the_function_s_framing_and_our_own_headers_are_not_passed_on(name) -> None:
    outcome = Outcome(200, 1, 0.5, ((name, "from-the-function"), ("x-kept", "1")))
    headers = callback_headers("c1", "fn", outcome)
    assert b"from-the-function" not in b"".join(
        v for _, values in headers.getAllRawHeaders() for v in values)
    assert headers.getRawHeaders("x-kept") == ["1"]


def test_the_connection_goes_to_the_address_family_and_tls_of_the_url() -> None:
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
    from twisted.web.client import URI

    rules = CallbackRules(allow=parse_networks(["127.0.0.1/32", "::1/128"]))
    four = _Pinned(reactor, "127.0.0.1", 1.5, rules).endpointForURI(
        URI.fromBytes(b"http://hook.example:8080/x"))
    assert isinstance(four, TCP4ClientEndpoint)
    assert (four._host, four._port, four._timeout) == ("127.0.0.1", 8080, 1.5)
    six = _Pinned(reactor, "::1", 1.5, rules).endpointForURI(
        URI.fromBytes(b"http://hook.example:8080/x"))
    assert isinstance(six, TCP6ClientEndpoint) and six._host == "::1"
    tls = _Pinned(reactor, "127.0.0.1", 1.5, rules).endpointForURI(
        URI.fromBytes(b"https://hook.example/x"))
    assert not isinstance(tls, TCP4ClientEndpoint)
    assert tls._wrappedEndpoint._port == 443      # TLS over the pinned address
    assert tls._wrappedEndpoint._host == "127.0.0.1"


class Silent(Resource):
    isLeaf = True

    def render_POST(self, request):
        from twisted.web.server import NOT_DONE_YET

        self.request = request
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_is_no_answer_within_the_timeout() -> None:
    port = reactor.listenTCP(0, Site(Silent()), interface="127.0.0.1")
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 0.3, resolver(["127.0.0.1"]))
    try:
        started = reactor.seconds()
        status = await sender.send(f"http://hook.example:{port.getHost().port}/x", "c1", "fn",
                                   OUTCOME, b"")
        assert status == NO_ANSWER and reactor.seconds() - started < 2.0
    finally:
        await sender.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_resolver_that_hangs_is_no_answer_within_the_timeout() -> None:
    import time

    def slow(host: str, port: int):
        time.sleep(1.0)
        return []
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 0.2, slow)
    started = reactor.seconds()
    assert await sender.send("http://hook.example/x", "c1", "fn", OUTCOME, b"") == NO_ANSWER
    assert reactor.seconds() - started < 0.9


@pytest_twisted.ensureDeferred
async def test_each_callback_has_a_connection_of_its_own(receiver) -> None:
    """No connection is kept: each callback connects to the address checked for it."""
    resource, port = receiver
    sender = CallbackSender(reactor, LOOPBACK_ALLOWED, 5.0, resolver(["127.0.0.1"]))
    try:
        for call_id in ("c1", "c2"):
            assert await sender.send(f"http://hook.example:{port}/x", call_id, "fn", OUTCOME,
                                     b"") == 200
    finally:
        await sender.close()
    assert len(set(resource.clients)) == 2
