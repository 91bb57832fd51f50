"""Compatibility between txaioetcd 18.10.2 and the etcd servers we meet (3.4, 3.5).

txaioetcd's last release hard-codes etcd 3.2's ``/v3alpha/`` JSON gateway, which etcd
3.4 answers with 404 (it serves ``/v3/`` and ``/v3beta/``; 3.5 serves only ``/v3/``).
This module is the one place that knows: it probes which prefix a server speaks,
points txaioetcd's endpoint constants at it, and does the lease calls txaioetcd gets
wrong (its ``Lease.refresh``/``revoke`` keep the old paths) through our own small
JSON client on the injected reactor.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Generator

import treq
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS

from txaioetcd import Client
from zope.interface import implementer

from faastwist.util.bodyproducer import BytesProducer
from faastwist.store.base import StoreError
from faastwist.util.reactor import IFullReactor

log = Logger()

#: Gateway prefixes in order of preference (3.4+ first; 3.3 knows only /v3beta).
API_PREFIXES: tuple[str, ...] = ("/v3", "/v3beta")

#: txaioetcd's endpoint constants, as path suffixes after the API prefix.
_ENDPOINTS: dict[str, str] = {
    "ENDPOINT_STATUS": "/maintenance/status",
    "ENDPOINT_PUT": "/kv/put",
    "ENDPOINT_GET": "/kv/range",
    "ENDPOINT_DELETE": "/kv/deleterange",
    "ENDPOINT_WATCH": "/watch",
    "ENDPOINT_SUBMIT": "/kv/txn",
    "ENDPOINT_LEASE": "/lease/grant",
}

_JSON_HEADERS = Headers({b"Content-Type": [b"application/json"]})
#: gRPC metadata "hasleader" (through the gateway's Grpc-Metadata- headers): a member
#: that has lost its leader answers "etcdserver: no leader" at once instead of holding
#: the call until its own request timeout (measured on 3.4: 6 s, then "request timed
#: out" for a read and "context deadline exceeded" for a write)
REQUIRE_LEADER: dict[bytes | str, list[bytes | str]] = {"Grpc-Metadata-hasleader": ["true"]}
_LEADER_HEADERS = Headers({b"Content-Type": [b"application/json"],
                           b"Grpc-Metadata-hasleader": [b"true"]})
#: what etcd answers when the member has no leader: the call was not applied
NO_LEADER = "etcdserver: no leader"

_applied_prefix: str | None = None


class EtcdHttpError(StoreError):
    """etcd answered, but not with success (HTTP error or a gateway error body)."""

    def __init__(self, url: str, status: int, message: str, code: int | None = None) -> None:
        super().__init__(f"etcd {url}: HTTP {status}: {message}")
        self.url = url
        self.status = status
        self.message = message
        self.code = code


class IncompatibleEtcd(StoreError):
    """The server answers HTTP but serves none of the JSON gateways we know."""


@implementer(IAgentEndpointFactory)
class _MemberEndpoints:
    """Endpoints for member URLs: an IP literal is connected to directly. Twisted's
    HostnameEndpoint reports a refused connection only at its next attempt tick (0.3 s
    later, measured), so every dead member cost each call 0.3 s."""

    def __init__(self, reactor: IFullReactor, tls: IPolicyForHTTPS | None) -> None:
        self.reactor = reactor
        self.tls = tls

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, uri.host, uri.port)
        else:
            kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
            endpoint = kind(self.reactor, str(address), uri.port)
        if uri.scheme == b"https":
            policy = self.tls if self.tls is not None else BrowserLikePolicyForHTTPS()
            endpoint = wrapClientTLS(policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


def member_agent(reactor: IFullReactor, tls: IPolicyForHTTPS | None = None,
                 pool: HTTPConnectionPool | None = None) -> IAgent:
    """An Agent for etcd member URLs (with the node's TLS policy when given)."""
    return Agent.usingEndpointFactory(reactor, _MemberEndpoints(reactor, tls), pool=pool)


class EtcdHttp:
    """JSON POSTs to etcd's gRPC gateway, on the injected reactor, with a timeout each."""

    def __init__(self, reactor: IFullReactor, agent: IAgent | None = None,
                 tls: IPolicyForHTTPS | None = None) -> None:
        self.reactor = reactor
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 4
            self._pool._factory.noisy = False  # one log line per connection otherwise
            agent = member_agent(reactor, tls, self._pool)
        self.agent = agent

    @inlineCallbacks
    def post(self, url: str, body: dict[str, Any], timeout: float | None = None,
             require_leader: bool = True) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        """POST ``body`` as JSON; the parsed JSON answer, or EtcdHttpError. Without
        ``timeout`` the caller bounds the call (store/failover.py cancels it)."""
        d = self.agent.request(b"POST", url.encode(),
                               _LEADER_HEADERS if require_leader else _JSON_HEADERS,
                               BytesProducer(json.dumps(body).encode()))
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)
        response = yield d
        rd = readBody(response)
        if timeout is not None:
            rd.addTimeout(timeout, self.reactor)
        raw = yield rd
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if response.code != 200 or not isinstance(data, dict):
            text = raw[:200].decode("utf-8", "replace").strip()
            message, code = text, None
            if isinstance(data, dict):
                message = str(data.get("message") or data.get("error") or text)
                code = data.get("code")
            raise EtcdHttpError(url, response.code, message, code)
        if "error" in data and "result" not in data and "header" not in data:
            raise EtcdHttpError(url, response.code, str(data.get("message") or data["error"]),
                                data.get("code"))
        return data

    def close(self) -> Deferred[None]:
        """Drop idle pooled connections (the Deferred fires when they are closed)."""
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return succeed(None)



class GatewayClient(Client):
    """txaioetcd's Client posting through an Agent of ours (its own posts go through
    treq's global pool and TLS policy) with the "hasleader" requirement; the caller
    bounds each call (the timeout argument txaioetcd passes along is ignored)."""

    def __init__(self, reactor: IFullReactor, url: str, pool: HTTPConnectionPool,
                 tls: IPolicyForHTTPS | None = None) -> None:
        super().__init__(reactor, url=url, pool=pool)
        self._agent = member_agent(reactor, tls, pool)
        self._clock = reactor

    @inlineCallbacks
    def _post(self, url: str, data: object,
              timeout: float | None) -> Generator[Deferred[Any], Any, Any]:
        # treq wants its own reactor interface, which IFullReactor provides but does not
        # name; the JSON answer is Any (treq.json_content's)
        response = yield treq.post(url, json=data, agent=self._agent,
                                   reactor=self._clock,  # type: ignore[arg-type]
                                   headers=REQUIRE_LEADER)
        return (yield treq.json_content(response))


@inlineCallbacks
def probe_api_prefix(http: EtcdHttp, endpoint: str,
                     timeout: float | None = None) -> Generator[Deferred[Any], Any, str]:
    """The first of API_PREFIXES that ``endpoint`` serves (maintenance/status answers).

    Connection errors propagate (the endpoint is down, not incompatible).
    """
    tried = []
    for prefix in API_PREFIXES:
        url = f"{endpoint}{prefix}/maintenance/status"
        try:
            # a member without a leader still says what it is
            status = yield http.post(url, {}, timeout, require_leader=False)
        except EtcdHttpError as exc:
            tried.append(f"{prefix}: HTTP {exc.status}")
            continue
        if "version" in status:
            log.debug("etcd {endpoint} is version {version}, speaking {prefix}",
                      endpoint=endpoint, version=status["version"], prefix=prefix)
            return prefix
        tried.append(f"{prefix}: answer without a version")
    raise IncompatibleEtcd(
        f"etcd at {endpoint} serves none of the JSON gateways {', '.join(API_PREFIXES)} "
        f"({'; '.join(tried)}); faastwist needs etcd 3.3 or newer")


def apply_api_prefix(prefix: str) -> None:
    """Point txaioetcd's endpoint constants (in every module that copied them) at ``prefix``."""
    global _applied_prefix
    if prefix not in API_PREFIXES:
        raise ValueError(f"unknown etcd API prefix {prefix!r}")
    if _applied_prefix is not None and _applied_prefix != prefix:
        log.warn("txaioetcd switched from {old} to {new}: etcd servers of mixed versions",
                 old=_applied_prefix, new=prefix)
    from txaioetcd import _client_commons, _client_tx

    for module in (_client_commons, _client_tx):
        for name, suffix in _ENDPOINTS.items():
            if hasattr(module, name):
                setattr(module, name, "{}" + prefix + suffix)
    _applied_prefix = prefix


def applied_api_prefix() -> str | None:
    """The prefix txaioetcd currently uses (None before the first connect)."""
    return _applied_prefix


class LeaseApi:
    """Lease grant, keep-alive and revoke over the JSON gateway (not txaioetcd's Lease)."""

    def __init__(self, http: EtcdHttp, api_prefix: str) -> None:
        self.http = http
        self.api_prefix = api_prefix

    @inlineCallbacks
    def grant(self, endpoint: str, ttl: int,
              timeout: float | None = None) -> Generator[Deferred[Any], Any, tuple[int, int]]:
        """A new lease: ``(lease_id, granted_ttl)``; etcd may raise a too-short TTL."""
        data = yield self.http.post(f"{endpoint}{self.api_prefix}/lease/grant",
                                    {"TTL": int(ttl), "ID": 0}, timeout)
        if "ID" not in data:
            raise EtcdHttpError(endpoint, 200, f"lease grant answered without an ID: {data}")
        return int(data["ID"]), int(data.get("TTL", ttl))

    @inlineCallbacks
    def keepalive(self, endpoint: str, lease_id: int,
                  timeout: float | None = None) -> Generator[Deferred[Any], Any, int]:
        """Refresh the lease; the remaining TTL, 0 when the lease no longer exists."""
        data = yield self.http.post(f"{endpoint}{self.api_prefix}/lease/keepalive",
                                    {"ID": str(lease_id)}, timeout)
        result = data.get("result")
        if not isinstance(result, dict):
            raise EtcdHttpError(endpoint, 200, f"lease keep-alive answered without a result: {data}")
        return int(result.get("TTL", 0))

    @inlineCallbacks
    def revoke(self, endpoint: str, lease_id: int,
               timeout: float | None = None) -> Generator[Deferred[Any], Any, None]:
        """Revoke the lease (deleting its keys); a lease already gone is fine."""
        try:
            yield self.http.post(f"{endpoint}{self.api_prefix}/lease/revoke",
                                 {"ID": str(lease_id)}, timeout)
        except EtcdHttpError as exc:
            if "lease not found" not in exc.message:
                raise
