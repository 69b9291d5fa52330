"""The mqtt source against a real Mosquitto: JSON paths, raw numbers, bad payloads, auth,
and a broker that restarts."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.sources.base import SensorSample
from edge_agent.sources.mqtt import MqttSource
from tests.support import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
PASSWORD = "pump-" + "test"  # a throwaway broker's throwaway account


class Mosquitto:
    """A Mosquitto process on a fixed loopback port that can be stopped and started again."""

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Run as ourselves: as root, Mosquitto would drop to its own user, which
            # cannot read a password file inside pytest's private (0700) tmp_path.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
        ]
        if tls is not None:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        if users is None:
            lines.append("allow_anonymous true")
        else:
            passwd = directory / "passwd"
            for user, password in users.items():
                flags = ["-b"] if passwd.exists() else ["-c", "-b"]
                subprocess.run(
                    [MOSQUITTO_PASSWD, *flags, str(passwd), user, password], check=True, timeout=10
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path, users={"agent": PASSWORD, "plc": PASSWORD})
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (PEM files)."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedge test CA"))
        .issuer_name(name("fedge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    files = _tls_files(tmp_path)
    b = Mosquitto(tmp_path, tls=files)
    b.start()
    try:
        yield b, files[0]
    finally:
        b.stop()


class Publisher:
    """The plant side: a paho client publishing QoS 1 messages and waiting for each."""

    def __init__(self, port: int, *, ca: Path | None = None, **auth: str) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


CHANNELS = [
    {"name": "temp", "topic": "plant/pump3/temp", "path": "data.value"},
    {"name": "pressure", "topic": "plant/pump3/pressure"},  # the payload is the number
    {"name": "flow", "topic": "plant/pump3/state", "path": "flow"},
    {"name": "rpm", "topic": "plant/pump3/state", "path": "motor.0.rpm"},
]


def _source(port: int, **extra: Any) -> MqttSource:
    return MqttSource.from_options(
        {
            "host": "127.0.0.1",
            "port": port,
            "channels": CHANNELS,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "healthy_after_s": 0.5,
            **extra,
        }
    )


def _next(src: MqttSource, *, timeout: float = 10.0) -> SensorSample:
    """The next reading, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.read()
        if sample is not None:
            return sample
        time.sleep(0.01)
    raise AssertionError(f"no reading within {timeout} s; {src.health()}")


def test_channels_from_json_paths_and_raw_payloads(broker: Mosquitto) -> None:
    src = _source(broker.port)
    src.start()
    pub = Publisher(broker.port)
    try:
        assert wait_until(lambda: src.health().state == "ok", timeout=10)
        assert src.read() is None  # nothing published yet
        pub.send("plant/pump3/temp", json.dumps({"data": {"value": 41.5}}))
        first = _next(src)
        assert first.values[0] == 41.5 and np.isnan(first.values[1:]).all()
        assert first.ts is not None and first.unit is None

        pub.send("plant/pump3/pressure", b"1.25")
        pub.send("plant/pump3/state", json.dumps({"flow": 12, "motor": [{"rpm": 1480}]}))
        newest = _Newest(src)  # messages on different topics may land in different reads
        assert wait_until(lambda: newest.equals([41.5, 1.25, 12.0, 1480.0]), timeout=10)
        assert src.health().bad_rows == 0
        assert src.read() is None  # one reading per batch of news, no repeats

        before = src.health().bad_rows
        pub.send("plant/pump3/temp", b"not json")
        pub.send("plant/pump3/temp", json.dumps({"data": {"value": "hot"}}))
        pub.send("plant/pump3/pressure", b"high")
        pub.send("plant/pump3/state", json.dumps({"flow": 13}))  # rpm missing: one bad
        pub.send("plant/other/topic", b"ignored")
        assert wait_until(lambda: src.health().bad_rows == before + 4, timeout=10)
        sample = _next(src)
        assert sample.values[2] == 13.0 and sample.values[0] == 41.5  # the others held
        assert "topic 'plant/pump3/state'" in (src.health().last_error or "")
    finally:
        pub.close()
        src.close()
    assert not src._worker.running


class _Newest:
    """Reads a source and remembers the newest reading's values."""

    def __init__(self, src: MqttSource) -> None:
        self._src = src
        self.values: np.ndarray | None = None

    def equals(self, expected: list[float]) -> bool:
        sample = self._src.read()
        if sample is not None:
            self.values = sample.values
        return self.values is not None and np.array_equal(self.values, expected)


def test_the_broker_restarts_and_readings_resume(broker: Mosquitto) -> None:
    src = _source(broker.port)
    src.start()
    try:
        assert wait_until(lambda: src.health().state == "ok", timeout=10)
        broker.stop()
        assert wait_until(lambda: src.health().state == "reconnecting", timeout=10)
        errors = src.health().errors
        assert wait_until(lambda: src.health().errors > errors, timeout=10)  # still trying
        broker.start()
        assert wait_until(lambda: src.health().state == "ok", timeout=10)
        assert src.health().reconnects >= 1
        pub = Publisher(broker.port)
        try:
            pub.send("plant/pump3/pressure", b"2.5")
            assert _next(src).values[1] == 2.5
        finally:
            pub.close()
    finally:
        src.close()


def test_username_password_and_a_refusal(auth_broker: Mosquitto) -> None:
    good = _source(auth_broker.port, username="agent", password=PASSWORD)
    bad = _source(auth_broker.port, username="agent", password=PASSWORD + "x")
    good.start()
    bad.start()
    try:
        assert wait_until(lambda: good.health().state == "ok", timeout=10)
        assert wait_until(lambda: bad.health().errors >= 1, timeout=10)
        assert bad.health().state == "down"
        assert "refused" in (bad.health().last_error or "")
        pub = Publisher(auth_broker.port, username="plc", password=PASSWORD)
        try:
            pub.send("plant/pump3/pressure", b"3")
            assert _next(good).values[1] == 3.0
        finally:
            pub.close()
        assert bad.read() is None
    finally:
        good.close()
        bad.close()


def test_tls_with_the_plant_ca(tls_broker: tuple[Mosquitto, Path], tmp_path: Path) -> None:
    broker, ca = tls_broker
    trusted = _source(broker.port, tls=True, ca_file=str(ca))
    (tmp_path / "other").mkdir()
    other_ca = _tls_files(tmp_path / "other")  # a CA that did not sign the broker's cert
    untrusted = _source(broker.port, tls=True, ca_file=str(other_ca[0]))
    trusted.start()
    untrusted.start()
    try:
        assert wait_until(lambda: trusted.health().state == "ok", timeout=10)
        pub = Publisher(broker.port, ca=ca)
        try:
            pub.send("plant/pump3/pressure", b"4.5")
            assert _next(trusted).values[1] == 4.5
        finally:
            pub.close()
        assert wait_until(lambda: untrusted.health().errors >= 1, timeout=10)
        assert untrusted.health().state == "reconnecting"
        assert "certificate verify failed" in (untrusted.health().last_error or "")
    finally:
        trusted.close()
        untrusted.close()
