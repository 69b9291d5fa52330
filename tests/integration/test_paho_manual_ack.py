"""Persistent sessions and manual acknowledgements of the paho transport, against Mosquitto.

What ingest relies on: a message the consumer has not acknowledged is delivered
again on the next connection of the same client id (MQTT 3.1.1 and 5), a message it
has acknowledged is not, messages published while it is away are queued for it,
and an ack handle from an earlier connection sends nothing.
"""

from __future__ import annotations

import queue
import time

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOPIC = "t/manual-ack"


class Inbox:
    def __init__(self) -> None:
        self.queue: queue.Queue[InboundMessage] = queue.Queue()

    def __call__(self, message: InboundMessage) -> None:
        self.queue.put(message)

    def take(self, count: int, *, timeout: float = 10.0) -> list[InboundMessage]:
        deadline = time.monotonic() + timeout
        out: list[InboundMessage] = []
        while len(out) < count:
            out.append(self.queue.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def quiet(self, seconds: float) -> list[InboundMessage]:
        """Whatever else arrives within ``seconds`` (expected: nothing)."""
        time.sleep(seconds)
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


def _consumer(url: str, protocol: str, client_id: str) -> tuple[PahoTransport, Inbox]:
    endpoint = BrokerEndpoint.from_url(url, protocol=protocol)
    transport = PahoTransport(endpoint, client_id=client_id, clean_session=False, manual_ack=True)
    inbox = Inbox()
    transport.subscribe(TOPIC, qos=1)  # before connect: ready for the session's queue
    transport.connect(on_message=inbox)
    assert transport.wait_subscribed(10.0)
    return transport, inbox


def _publish(publisher: PahoTransport, payloads: list[bytes]) -> None:
    handles = [publisher.publish(TOPIC, p, qos=1) for p in payloads]
    assert all(h.wait(10.0) for h in handles)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_unacknowledged_messages_come_back_on_the_next_connection(
    mosquitto: Mosquitto, protocol: str
) -> None:
    publisher = PahoTransport(BrokerEndpoint.from_url(mosquitto.url), client_id="pub")
    publisher.connect(on_message=lambda _m: None)
    consumer, inbox = _consumer(mosquitto.url, protocol, "consumer")
    try:
        _publish(publisher, [b"m0", b"m1", b"m2", b"m3", b"m4"])
        first = inbox.take(5)
        assert [m.payload for m in first] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert all(m.needs_ack for m in first)
        for message in first[:2]:
            consumer.ack(message)
        deadline = time.monotonic() + 5
        while consumer.acks_sent < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # let the PUBACKs reach the broker before we go
        consumer.close(drain_timeout=0)
        # Published while the consumer is away: queued in its session.
        _publish(publisher, [b"m5", b"m6"])

        again, inbox2 = _consumer(mosquitto.url, protocol, "consumer")
        try:
            assert again.session_present
            redelivered = inbox2.take(5)
            assert sorted(m.payload for m in redelivered) == [b"m2", b"m3", b"m4", b"m5", b"m6"]
            # The old connection's handles are void: nothing is sent for them.
            first[2].ack()
            assert again.acks_stale == 0 and consumer.acks_stale == 1
            for message in redelivered:
                again.ack(message)
            deadline = time.monotonic() + 5
            while again.acks_sent < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert again.acks_sent == 5
            time.sleep(0.3)
        finally:
            again.close(drain_timeout=0)

        # Everything was acknowledged: a third connection gets nothing.
        third, inbox3 = _consumer(mosquitto.url, protocol, "consumer")
        try:
            assert inbox3.quiet(1.0) == []
        finally:
            third.close(drain_timeout=0)
    finally:
        publisher.close()


def test_without_manual_ack_messages_need_no_ack(mosquitto: Mosquitto) -> None:
    endpoint = BrokerEndpoint.from_url(mosquitto.url)
    consumer = PahoTransport(endpoint, client_id="auto")
    inbox = Inbox()
    consumer.connect(on_message=inbox)
    consumer.subscribe(TOPIC, qos=1)
    publisher = PahoTransport(endpoint, client_id="pub-auto")
    publisher.connect(on_message=lambda _m: None)
    try:
        assert consumer.wait_subscribed(10.0)
        _publish(publisher, [b"x"])
        (message,) = inbox.take(1)
        assert not message.needs_ack
        consumer.ack(message)  # a no-op
        assert consumer.acks_sent == 0
    finally:
        publisher.close()
        consumer.close()
