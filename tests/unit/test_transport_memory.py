"""InMemoryBroker: the MQTT semantics fedge relies on, in process."""

from __future__ import annotations

import pytest

from fedge.errors import TransportError
from fedge.transport import InboundMessage, InMemoryBroker, InMemoryTransport, Transport, Will


class Inbox:
    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []

    def __call__(self, message: InboundMessage) -> None:
        self.messages.append(message)

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]


def _client(broker: InMemoryBroker, client_id: str, will: Will | None = None
            ) -> tuple[InMemoryTransport, Inbox]:
    inbox = Inbox()
    transport = broker.transport(client_id)
    transport.connect(on_message=inbox, will=will)
    return transport, inbox


def test_is_a_transport() -> None:
    assert isinstance(InMemoryBroker().transport("x"), Transport)


def test_live_delivery_to_matching_subscribers_only() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe("a/b")
    pub.publish("a/b", b"1")
    pub.publish("a/c", b"2")
    assert inbox.messages == [InboundMessage("a/b", b"1", retain=False, qos=1)]
    assert broker.published_count == 2
    assert broker.published_bytes == 2


def test_retained_message_delivered_on_subscribe() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    handle = pub.publish("fleet/model/global", b"weights", retain=True)
    assert handle.delivered is True
    assert handle.wait(0.1) is True
    pub.publish("fleet/other", b"not retained")
    late, inbox = _client(broker, "late")
    late.subscribe("fleet/#")
    assert inbox.messages == [InboundMessage("fleet/model/global", b"weights", retain=True, qos=1)]


def test_retained_is_replaced_by_the_latest() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    pub.publish("t", b"old", retain=True)
    pub.publish("t", b"new", retain=True)
    sub, inbox = _client(broker, "sub")
    sub.subscribe("t")
    assert [m.payload for m in inbox.messages] == [b"new"]


def test_live_delivery_clears_the_retain_flag() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe("t")
    pub.publish("t", b"x", retain=True)
    assert inbox.messages[0].retain is False


def test_empty_retained_payload_clears() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    pub.publish("status/pump-03", b"online", retain=True)
    pub.publish("status/pump-03", b"", retain=True)
    sub, inbox = _client(broker, "sub")
    sub.subscribe("status/+")
    assert inbox.messages == []


@pytest.mark.parametrize(
    ("topic_filter", "matches"),
    [
        ("fedge/v1/f/devices/+/status",
         ["fedge/v1/f/devices/a/status", "fedge/v1/f/devices/b/status"]),
        ("fedge/v1/f/rounds/+/updates/+", ["fedge/v1/f/rounds/3/updates/a"]),
        ("fedge/v1/f/#", [
            "fedge/v1/f/devices/a/status", "fedge/v1/f/devices/b/status",
            "fedge/v1/f/devices/a/telemetry", "fedge/v1/f/rounds/3/updates/a",
            "fedge/v1/f/model/global",
        ]),
        ("fedge/v1/+/model/global", ["fedge/v1/f/model/global", "fedge/v1/g/model/global"]),
        ("#", None),
        ("fedge/v1/f/devices/+", []),
    ],
)
def test_wildcard_filters(topic_filter: str, matches: list[str] | None) -> None:
    topics = [
        "fedge/v1/f/devices/a/status",
        "fedge/v1/f/devices/b/status",
        "fedge/v1/f/devices/a/telemetry",
        "fedge/v1/f/rounds/3/updates/a",
        "fedge/v1/f/model/global",
        "fedge/v1/g/model/global",
    ]
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe(topic_filter)
    for topic in topics:
        pub.publish(topic, b"x")
    assert inbox.topics == (topics if matches is None else matches)


def test_overlapping_subscriptions_deliver_once_with_the_highest_qos() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe("a/#", qos=0)
    sub.subscribe("a/+", qos=1)
    pub.publish("a/b", b"x", qos=1)
    assert len(inbox.messages) == 1
    assert inbox.messages[0].qos == 1


def test_delivered_qos_is_the_minimum_of_publish_and_subscription() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe("a", qos=0)
    pub.publish("a", b"x", qos=1)
    assert inbox.messages[0].qos == 0


def test_will_published_on_drop() -> None:
    broker = InMemoryBroker()
    will = Will("fedge/v1/f/devices/d/status", b'{"state":"offline"}')
    _client(broker, "agent", will=will)
    watcher, inbox = _client(broker, "watcher")
    watcher.subscribe("fedge/v1/f/devices/+/status")
    broker.drop("agent")
    assert inbox.messages == [InboundMessage(will.topic, will.payload, retain=False, qos=1)]
    # The will is retained, so a later subscriber learns the device is offline too.
    late, late_inbox = _client(broker, "late")
    late.subscribe("fedge/v1/f/devices/+/status")
    assert late_inbox.messages == [InboundMessage(will.topic, will.payload, retain=True, qos=1)]


def test_will_not_published_on_close() -> None:
    broker = InMemoryBroker()
    agent, _ = _client(broker, "agent", will=Will("status/d", b"offline"))
    watcher, inbox = _client(broker, "watcher")
    watcher.subscribe("status/#")
    agent.close()
    agent.close()  # idempotent
    broker.drop("agent")  # already gone: nothing more to publish
    assert inbox.messages == []
    assert broker.published_count == 0


def test_dropped_client_gets_no_more_messages() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    sub, inbox = _client(broker, "sub")
    sub.subscribe("a")
    broker.drop("sub")
    pub.publish("a", b"x")
    assert inbox.messages == []


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+", "a/+/b"])
def test_publish_to_wildcard_topic_is_refused(topic: str) -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    with pytest.raises(TransportError, match="wildcard"):
        pub.publish(topic, b"x")
    assert broker.published_count == 0


def test_publish_needs_a_connection_and_subscribe_after_close_fails() -> None:
    broker = InMemoryBroker()
    transport = broker.transport("never-connected")
    with pytest.raises(TransportError, match="not connected"):
        transport.publish("a", b"x")
    connected, _ = _client(broker, "c")
    connected.close()
    with pytest.raises(TransportError, match="not connected"):
        connected.publish("a", b"x")
    with pytest.raises(TransportError, match="not connected"):
        connected.subscribe("a")


def test_subscription_before_connect_is_made_at_connect_before_any_message() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    pub.publish("a/retained", b"r", retain=True)
    early = broker.transport("early")
    early.subscribe("a/#")
    inbox = Inbox()
    early.connect(on_message=inbox)
    pub.publish("a/live", b"l")
    assert inbox.messages == [
        InboundMessage("a/retained", b"r", retain=True, qos=1),
        InboundMessage("a/live", b"l", retain=False, qos=1),
    ]


def test_in_memory_ack_is_a_counted_no_op() -> None:
    broker = InMemoryBroker()
    sub, inbox = _client(broker, "sub")
    sub.subscribe("a")
    pub, _ = _client(broker, "pub")
    pub.publish("a", b"x")
    (message,) = inbox.messages
    assert not message.needs_ack
    sub.ack(message)
    assert sub.acks == 1


def test_second_connection_with_the_same_client_id_takes_over() -> None:
    broker = InMemoryBroker()
    pub, _ = _client(broker, "pub")
    first, first_inbox = _client(broker, "same")
    first.subscribe("a")
    second, second_inbox = _client(broker, "same")
    second.subscribe("b")
    pub.publish("a", b"1")
    pub.publish("b", b"2")
    assert first_inbox.messages == []
    assert second_inbox.topics == ["b"]
