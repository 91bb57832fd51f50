"""Server TLS for the lean transport: the standard library's ``ssl`` over memory BIOs.

Why not Twisted's ``TLSMemoryBIOProtocol``: measured here (HTTPS c16, keep-alive), it
runs the lean transport at well under what this module does: pyOpenSSL crosses cffi per
call and raises an exception per read; its buffering transport schedules a
``callLater(0)`` per response, and the encrypted bytes then wait for the next reactor
pass once more. Here ``SSLObject`` (C) encrypts and decrypts, and a response is sent
at once when nothing is queued (``wire.write_now``).

One ``TLSServerProtocol`` sits between a TCP connection and the protocol that speaks
HTTP: the lean protocol, or twisted.web's channel when ALPN chose ``h2`` (HTTP/2 stays
on twisted.web). It is that protocol's transport. The inner protocol is connected at
once, so its timers (the head timeout) count from the connect, handshake included; its
writes before the handshake is over wait for it. A handshake that does not finish
within the head timeout ends the connection (nothing can be answered without one).
"""

from __future__ import annotations

import ssl
from typing import Iterable, Sequence

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from faastwist.gate.wire import no_delay, tcp_socket, write_now
from faastwist.util.reactor import IStreamTransport
from faastwist.util.tls import default_protocols

#: how much one ``SSLObject.read`` may return (one TLS record holds at most 16 KiB)
READ_SIZE = 64 * 1024


class ReloadableServerContext:
    """The current ``ssl.SSLContext`` from PEM files, rebuilt by ``reload`` (SIGHUP).

    Connections already open keep the context they started with; a reload whose files
    are broken raises and keeps the current one. TLS 1.2 and 1.3 only."""

    def __init__(self, cert_file: str, key_file: str,
                 protocols: Sequence[bytes] | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.protocols = [p.decode() for p in (protocols if protocols is not None
                                               else default_protocols())]
        self.context = self._build()

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        # the chain after the leaf in certFile is sent too (as the pyOpenSSL path does)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            # ssl's own message names neither file ("[SSL] PEM lib")
            raise ValueError(f"cannot load the certificate {self.cert_file} with the key "
                             f"{self.key_file}: {exc}") from None
        context.set_alpn_protocols(self.protocols)
        return context

    def reload(self) -> None:
        """Read the files again; on any error raise and keep the current certificate."""
        self.context = self._build()


class TLSServerFactory(Factory):
    """TLS in front of the lean factory's protocols; ``h2`` (a twisted.web factory, or
    None) builds the protocol for connections whose ALPN chose HTTP/2."""

    noisy = False

    def __init__(self, tls: ReloadableServerContext, lean: IProtocolFactory,
                 clock: IReactorTime, handshake_timeout: float,
                 h2: IProtocolFactory | None = None) -> None:
        self.tls = tls
        self.lean = lean
        self.h2 = h2
        self.clock = clock
        self.handshake_timeout = handshake_timeout

    def doStart(self) -> None:
        self.lean.doStart()
        if self.h2 is not None:
            self.h2.doStart()

    def doStop(self) -> None:
        self.lean.doStop()
        if self.h2 is not None:
            self.h2.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if addr is None:
            # Factory's signature allows None; a listener always passes the peer's address,
            # which the inner factories (IProtocolFactory) require
            return None
        inner = self.lean.buildProtocol(addr)
        if inner is None:
            return None   # refused by the lean factory: Twisted closes the connection
        return TLSServerProtocol(self, inner, addr)


@implementer(ITransport, ISSLTransport, IConsumer, IPushProducer)
class TLSServerProtocol(Protocol):
    """One TLS connection: decrypts into the inner protocol, encrypts its writes."""

    #: connected before any method here runs (faastwist/util/reactor.py)
    transport: IStreamTransport

    def __init__(self, factory: TLSServerFactory, inner: IProtocol,
                 addr: IAddress) -> None:
        self.factory = factory
        #: None once the connection is lost (or while ALPN hands it to HTTP/2)
        self.inner: IProtocol | None = inner
        self.addr = addr
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # the context as it is when the connection is accepted (a reload does not
        # change an open connection's)
        self.tls: ssl.SSLObject = factory.tls.context.wrap_bio(self._incoming,
                                                               self._outgoing,
                                                               server_side=True)
        self.handshaken = False
        self.direct = False
        self.lost = False
        self.closing = False
        self.shut = False                 # our close_notify went out: nothing more to send
        self.paused = False
        self._reading = False
        self._early: list[bytes] = []     # the inner protocol's writes before the handshake
        self._timer: IDelayedCall | None = None

    # -- the TCP side ------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.direct = isinstance(transport, tcp.Connection)
        no_delay(tcp_socket(transport))
        self._timer = self.factory.clock.callLater(self.factory.handshake_timeout,
                                                   self._handshake_timed_out)
        if self.inner is not None:
            self.inner.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self.lost:
            return
        self._incoming.write(data)
        if not self.handshaken:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError):
                # not TLS, no shared version or cipher, a bad record: the alert (if
                # any) goes out, the connection ends; nothing to answer in HTTP
                self._flush()
                self.closing = True
                self.transport.loseConnection()
                return
            self._handshake_done()
            if self.lost or self.closing:
                return
        self._read()

    def _handshake_done(self) -> None:
        self.handshaken = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.negotiatedProtocol == b"h2" and self.factory.h2 is not None:
            # HTTP/2 is twisted.web's: hand the connection to its channel
            lean, self.inner = self.inner, None
            if lean is not None:
                lean.connectionLost(Failure(ConnectionSwitched()))
            h2 = self.inner = self.factory.h2.buildProtocol(self.addr)
            if h2 is None:   # the HTTP/2 factory refused it: nothing can answer
                self.abortConnection()
                return
            h2.makeConnection(self)
        early, self._early = self._early, []
        for data in early:
            self.write(data)
        if self.closing:
            self._close()
        else:
            self._flush()   # the TLS 1.3 session tickets

    def _read(self) -> None:
        """Hand the inner protocol what can be decrypted, while it reads."""
        if self._reading:
            return   # re-entered (a resume from within the inner protocol): the loop goes on
        self._reading = True
        try:
            tls = self.tls
            read = tls.read
            incoming = self._incoming
            while not self.paused and not self.lost:
                if not incoming.pending and not tls.pending():
                    break   # all read (no SSLWantReadError raised and caught per request)
                try:
                    data = read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:   # close_notify: the client is done
                    self.transport.loseConnection()
                    break
                except ssl.SSLError:
                    self._flush()
                    self.transport.abortConnection()
                    break
                inner = self.inner
                if not data or inner is None:
                    break
                inner.dataReceived(data)
        finally:
            self._reading = False
        if self._outgoing.pending:
            self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.connected = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self.handshaken and not self.lost:
            self.transport.abortConnection()

    # -- the inner protocol's transport --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.lost or self.shut or not data:
            return
        if not self.handshaken:
            self._early.append(data)
            return
        try:
            self.tls.write(data)
        except ssl.SSLError:
            self.transport.abortConnection()
            return
        self._flush()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def _flush(self) -> None:
        out = self._outgoing.read()
        if out:
            if self.direct:
                write_now(self.transport, out)
            else:
                self.transport.write(out)

    def loseConnection(self) -> None:
        if self.lost or self.closing:
            return
        self.closing = True
        if self.handshaken:
            self._close()
        elif not self._early:
            self.transport.loseConnection()
        # else: what was written goes out once the handshake is over (or times out)

    def _close(self) -> None:
        """Our close_notify, then the TCP close (after what is queued is sent)."""
        self.shut = True
        try:
            self.tls.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        self._flush()
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.closing = True
        if not self.lost:
            self.transport.abortConnection()

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self.transport.getPeer()

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.transport.getHost()

    def getHandle(self) -> object:
        return ISystemHandle(self.transport).getHandle()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return self.transport.getTcpNoDelay()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.transport.getTcpKeepAlive()

    def loseWriteConnection(self) -> None:
        """TLS has no half-close a client would understand: close the whole connection
        (after our close_notify)."""
        self.loseConnection()

    def getPeerCertificate(self) -> None:
        return None    # clients present no certificate to the gate

    @property
    def negotiatedProtocol(self) -> bytes | None:
        chosen = self.tls.selected_alpn_protocol()
        return chosen.encode() if chosen else None

    @property
    def disconnecting(self) -> bool:
        return self.closing or bool(getattr(self.transport, "disconnecting", False))

    # IConsumer: the inner protocol's producers are paused by the TCP buffer, which is
    # where every write lands at once
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not self.lost:
            self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if not self.lost:
            self.transport.unregisterProducer()

    # IPushProducer: the inner protocol stops and resumes reading the client
    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            if not self.lost:
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            if not self.lost:
                self.transport.resumeProducing()
                if self.handshaken:
                    self._read()   # records already decrypted-ready in the BIO

    def stopProducing(self) -> None:
        self.abortConnection()


class ConnectionSwitched(Exception):
    """The lean protocol's end on a connection ALPN gave to HTTP/2 (twisted.web)."""
