"""Real MQTT brokers for integration tests: a Mosquitto process and the embedded broker."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.embedded import EmbeddedBroker
from tests.support import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass(frozen=True)
class BrokerProcess:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real Mosquitto 2.x on a free loopback port, config and data in tmp_path."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed; scripts/test.sh installs it (apt-get)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "message_size_limit 16777216\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port)
        yield BrokerProcess("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def embedded_broker() -> Iterator[BrokerProcess]:
    """fedge's embedded amqtt broker on a free loopback port."""
    broker = EmbeddedBroker().start()
    try:
        yield BrokerProcess(broker.host, broker.port)
    finally:
        broker.stop()
