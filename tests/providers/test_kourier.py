"""Knative-style routing (faastwist/providers/kourier.py): every function on kourier's
one address, told apart by ``Host: {name}.{namespace}.{hostSuffix}``."""

from __future__ import annotations

import pytest

from faastwist.config import KnativeConfig
from faastwist.model.spec import FunctionSpec
from faastwist.providers.base import StaticLease, Upstream
from faastwist.providers.kourier import KnativeRouting, parse_origin, routing_from_settings


@pytest.mark.parametrize(("url", "origin"), [
    ("http://127.0.0.1", ("http", "127.0.0.1", 80)),
    ("https://kourier.internal", ("https", "kourier.internal", 443)),
    ("http://127.0.0.1:31080/", ("http", "127.0.0.1", 31080)),
    ("https://[::1]:8443", ("https", "::1", 8443)),
    ("HTTP://Kourier:81", ("http", "kourier", 81)),
])
def test_an_origin_is_scheme_host_and_port_with_the_schemes_default(
        url: str, origin: tuple[str, str, int]) -> None:
    assert parse_origin(url) == origin


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://127.0.0.1", "must be an http:// or https:// URL, got 'ftp://127.0.0.1'"),
    ("127.0.0.1:8080", "must be an http:// or https:// URL, got '127.0.0.1:8080'"),
    ("http://", "has no host: 'http://'"),
    ("https:///path", "has no host: 'https:///path'"),
])
def test_what_is_not_an_http_origin_is_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_origin(url)
    assert str(caught.value) == message


def spec(name: str) -> FunctionSpec:
    return FunctionSpec(name=name, image="img")


def test_each_function_gets_kouriers_address_and_its_own_host() -> None:
    routing = KnativeRouting(KnativeConfig(network_layer_url="http://127.0.0.1:31080",
                                           host_suffix="fn.example", namespace="team"))
    lease = routing.acquire(spec("echo"))
    assert isinstance(lease, StaticLease)
    assert lease.upstream == Upstream("http", "127.0.0.1", 31080, "echo.team.fn.example")
    assert routing.host_for("other") == "other.team.fn.example"
    assert routing.acquire(spec("other")).upstream.host_header == "other.team.fn.example"


def test_a_lease_is_reused_until_forgotten() -> None:
    """The gate caches what it derives from a lease by identity: the same object each
    time, a new one only after ``forget`` (a changed spec)."""
    routing = KnativeRouting(KnativeConfig())
    first = routing.acquire(spec("echo"))
    assert routing.acquire(spec("echo")) is first
    routing.forget("echo")
    again = routing.acquire(spec("echo"))
    assert again is not first and again == first
    routing.forget("never-acquired")      # harmless
    assert routing.acquire(spec("echo")) is again


def test_the_defaults_route_to_loopback_port_80() -> None:
    lease = KnativeRouting(KnativeConfig()).acquire(spec("echo"))
    assert lease.upstream == Upstream("http", "127.0.0.1", 80, "echo.default.example.com")


def test_a_worker_builds_the_same_routing_from_the_settings_it_is_sent() -> None:
    routing = routing_from_settings({"network_layer_url": "https://kourier:8443",
                                     "host_suffix": "x.io", "namespace": "ns"})
    assert routing.acquire(spec("f")).upstream == Upstream("https", "kourier", 8443,
                                                            "f.ns.x.io")
    with pytest.raises(ValueError, match="must be an http"):
        routing_from_settings({"network_layer_url": "tcp://kourier"})
