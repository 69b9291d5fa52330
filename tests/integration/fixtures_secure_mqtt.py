"""A real Mosquitto running a provisioned (TLS, authenticated, ACL-checked) configuration.

Not a pytest plugin: tests provision a fleet on a free loopback port, then start the
broker with :func:`secure_broker` and talk to it with :class:`RawClient` (plain
paho-mqtt, to try what attackers would) or with fedge's own ``PahoTransport``.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.provision import ProvisionedFleet
from tests.support import wait_for_port, wait_until

__all__ = ["RawClient", "SecureBroker", "secure_broker"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class SecureBroker:
    """A Mosquitto process started with ``fleet.mosquitto_conf``; its log is kept."""

    fleet: ProvisionedFleet
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.fleet.broker_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        if not Path(MOSQUITTO).exists():
            raise RuntimeError("mosquitto is not installed; scripts/test.sh installs it (apt-get)")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.fleet.mosquitto_conf)], stdout=log, stderr=log
            )
        try:
            wait_for_port(self.port, timeout=10.0)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None

    def reload(self) -> None:
        """SIGHUP, then wait until Mosquitto logged the reload."""
        assert self.proc is not None
        before = self.log().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: self.log().count("Reloading config") > before, timeout=10.0)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@contextmanager
def secure_broker(fleet: ProvisionedFleet, log_path: Path) -> Iterator[SecureBroker]:
    """Run Mosquitto on the provisioned config for the duration of the block."""
    broker = SecureBroker(fleet, log_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class RawClient:
    """A bare paho client that records what happens to it (for attack attempts)."""

    port: int
    client_id: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connack: ReasonCode | None = None
    disconnects: int = 0

    def __post_init__(self) -> None:
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
        )
        if self.ca_file is not None:
            self._client.tls_set(
                ca_certs=str(self.ca_file),
                certfile=str(self.cert_file) if self.cert_file else None,
                keyfile=str(self.key_file) if self.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.username is not None:
            self._client.username_pw_set(self.username, self.password)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(
        self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object
    ) -> None:
        self.disconnects += 1
        self._connected.clear()
        self._closed.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self, *, timeout: float = 5.0) -> bool:
        """True once the broker accepted us; False if refused, dropped or timed out."""
        try:
            self._client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False  # TLS handshake refused (TLS 1.2 reports it here)
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected.is_set():
                return True
            if self._closed.is_set() or (self.connack is not None and self.connack.is_failure):
                break
            time.sleep(0.02)
        self.close()
        return False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic_filter: str, *, timeout: float = 5.0) -> None:
        done = threading.Event()
        self._client.on_subscribe = lambda *args: done.set()
        self._client.subscribe(topic_filter, qos=1)
        assert done.wait(timeout), f"no SUBACK for {topic_filter}"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, waiting for the PUBACK (Mosquitto acks denied publishes too)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5.0)
        assert info.is_published(), f"no PUBACK for {topic}"

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.received()}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
