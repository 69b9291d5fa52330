"""close() stays within its 2 s budget even when the device accepts and then says nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edge_agent.sources.modbus import ModbusSource
from edge_agent.sources.mqtt import MqttSource
from edge_agent.sources.opcua import OpcuaSource
from tests.support import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_peer() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback port that accepts TCP connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1]), accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


def _build(kind: str, port: int) -> ModbusSource | MqttSource | OpcuaSource:
    options: dict[str, Any] = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.1}
    if kind == "modbus":
        return ModbusSource.from_options(
            {"host": "127.0.0.1", "port": port, "channels": [{"name": "x", "address": 0}]} | options
        )
    if kind == "mqtt":
        return MqttSource.from_options(
            {"host": "127.0.0.1", "port": port, "channels": [{"name": "x", "topic": "t"}]} | options
        )
    return OpcuaSource.from_options(
        {
            "url": f"opc.tcp://127.0.0.1:{port}/",
            "nodes": [{"name": "x", "node_id": "ns=2;i=2"}],
            "timeout_s": 30.0,  # asyncua would wait this long for the server's hello
        }
        | options
    )


@pytest.mark.parametrize("kind", ["modbus", "mqtt", "opcua"])
def test_close_is_bounded_against_a_silent_device(
    kind: str, silent_peer: tuple[int, list[socket.socket]]
) -> None:
    port, accepted = silent_peer
    src = _build(kind, port)
    src.start()
    assert wait_until(lambda: bool(accepted), timeout=10)  # connected to the silent peer
    time.sleep(0.2)  # now waiting for an answer that never comes
    src.close()  # joins its thread for at most 2 s
    assert not src._worker.running
    assert src.health().state == "down"
    assert src.read() is None
