"""The paho transport's socket options against a real Mosquitto."""

from __future__ import annotations

import socket

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from tests.integration.fixtures_mqtt import BrokerProcess

pytestmark = pytest.mark.integration


def test_mqtt_socket_has_tcp_nodelay(mosquitto: BrokerProcess) -> None:
    # Without it, every small packet of a round (publish, PUBACK) waits ~40 ms for
    # Nagle's algorithm and the peer's delayed ACK.
    transport = PahoTransport(BrokerEndpoint.from_url(mosquitto.url), client_id="nodelay")
    transport.connect(on_message=lambda _m: None)
    try:
        sock = transport._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        transport.close()


def test_close_closes_the_loops_wake_up_sockets(mosquitto: BrokerProcess) -> None:
    # paho's loop_start makes a socket pair to wake its loop and loop_stop leaves it
    # open: left to the garbage collector, it raised a ResourceWarning in whatever test
    # happened to be running then.
    transport = PahoTransport(BrokerEndpoint.from_url(mosquitto.url), client_id="wakeup")
    transport.connect(on_message=lambda _m: None)
    client = transport._client
    pair = (client._sockpairR, client._sockpairW)
    assert all(s is not None and s.fileno() != -1 for s in pair)
    transport.close()
    assert all(s is not None and s.fileno() == -1 for s in pair)  # closed, not leaked
    # The transport can connect again afterwards (a fresh paho client).
    transport.connect(on_message=lambda _m: None)
    try:
        assert transport._client is not client and transport._client.is_connected()
    finally:
        transport.close()


def test_incoming_topics_are_matched_like_paho_matches_them() -> None:
    # The transport drops messages on topics it did not subscribe to (amqtt hands out
    # foreign retained ones). Its matcher is built once per subscribe; the answers must
    # be paho's own topic_matches_sub for every filter.
    import paho.mqtt.client as mqtt

    filters = ["fedge/v1/f/rounds/current", "fedge/v1/f/devices/+/status",
               "fedge/v1/f/rounds/+/updates/#", "$share/ingest/fedge/v1/f/telemetry/+"]
    topics = ["fedge/v1/f/rounds/current", "fedge/v1/f/rounds/currentx",
              "fedge/v1/f/devices/pump-1/status", "fedge/v1/f/devices/pump-1/status/x",
              "fedge/v1/f/rounds/3/updates", "fedge/v1/f/rounds/3/updates/pump-1",
              "fedge/v1/f/rounds/3/updates/pump-1/chunks", "fedge/v1/f/telemetry/pump-1",
              "fedge/v1/f/telemetry", "$SYS/broker/uptime", "other/topic", ""]
    transport = PahoTransport(BrokerEndpoint(host="127.0.0.1", port=1), client_id="matcher")
    assert not any(transport._subscribed_to(t) for t in topics)
    for f in filters:
        transport.subscribe(f)  # not connected: only remembered
    plain = [f.split("/", 2)[2] if f.startswith("$share/") else f for f in filters]
    for topic in topics:
        expected = any(mqtt.topic_matches_sub(f, topic) for f in plain)
        assert transport._subscribed_to(topic) is expected, topic
    assert transport._subscribed_to("fedge/v1/f/rounds/3/updates/pump-1")
    assert not transport._subscribed_to("$SYS/broker/uptime")
