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
