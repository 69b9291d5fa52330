"""Real MQTT brokers for integration tests: a Mosquitto process and the embedded broker.

Thin fixtures over :mod:`fedge_app.servers`; the ``mosquitto`` fixture yields the
:class:`~fedge_app.servers.Mosquitto` launcher itself, so a test can ``kill()`` or
``restart()`` the broker on the same port.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from broker.embedded import EmbeddedBroker
from fedge_app.servers import Mosquitto, find_binary


class BrokerProcess(Protocol):
    """What the tests need of a running broker, whichever it is."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class _Embedded:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto 2.x on a free loopback port, config and log in tmp_path."""
    if find_binary("mosquitto") is None:
        pytest.fail("mosquitto is not installed; scripts/test.sh installs it (apt-get)")
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def embedded_broker() -> Iterator[BrokerProcess]:
    """fedge's embedded amqtt broker on a free loopback port."""
    broker = EmbeddedBroker().start()
    try:
        yield _Embedded(broker.host, broker.port)
    finally:
        broker.stop()
