"""BytesProducer: the whole body in one write, on no reactor (faastwist.util.bodyproducer)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer

from faastwist.util.bodyproducer import BytesProducer


class Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_the_body_goes_in_one_write_with_its_length() -> None:
    producer = BytesProducer(b"hello body")
    assert IBodyProducer.providedBy(producer)
    assert producer.length == 10
    consumer = Consumer()
    done = producer.startProducing(consumer)
    assert isinstance(done, Deferred) and done.called
    assert consumer.writes == [b"hello body"]
    producer.pauseProducing()
    producer.resumeProducing()
    producer.stopProducing()
    assert consumer.writes == [b"hello body"]
