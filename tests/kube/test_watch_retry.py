"""The watch when the Kubernetes API cannot be reached: lists are retried with a delay
that doubles up to the resync interval (timers on a test Clock; the refusal is a real
TCP refusal on loopback), and nothing is written meanwhile."""

from __future__ import annotations

import time

import pytest_twisted
from kubernetes import client as kube_client
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater

from faastwist.config import KubernetesConfig
from faastwist.kube.objects import FAASTWIST
from faastwist.kube.service import build_watch
from faastwist.store.memory import MemoryStore
from faastwist.util.ports import free_port


class Leader:
    def is_leader(self) -> bool:
        return True

    def fence(self) -> list:
        return []


@inlineCallbacks
def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        yield deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.inlineCallbacks
def test_failed_lists_back_off_to_the_resync_interval_and_write_nothing():
    configuration = kube_client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"   # nothing listens: refused
    clock = Clock()
    store = MemoryStore()
    watch = build_watch(KubernetesConfig(functions="watch", timeout=2.0), "", store, clock,
                        check_spec=lambda spec: None, kick=lambda name: None,
                        leader=Leader(), observe=None, resync=10.0,
                        api_client=kube_client.ApiClient(configuration))
    # the calls run on the watch's threads and come back through the real reactor
    watch.api.reactor = reactor
    watch.startService()
    try:
        delays = []
        for _ in range(6):
            yield until(lambda: FAASTWIST in watch._retry)
            call = watch._retry[FAASTWIST]
            delays.append(round(call.getTime() - clock.seconds(), 3))
            clock.advance(call.getTime() - clock.seconds())
        assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        assert watch.lists >= 6 and store.writes == 0 and watch.sync.writes == 0
        assert FAASTWIST not in watch.listed and not watch.streams
    finally:
        watch.stopService()
    assert not watch._retry and not watch.leading
