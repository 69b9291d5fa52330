"""The mqtt source against a real Mosquitto: JSON paths, raw numbers, bad payloads, auth,
and a broker that restarts."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
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

    def __init__(self, directory: Path, *, users: dict[str, str] | None = None) -> None:
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


class Publisher:
    """The plant side: a paho client publishing QoS 1 messages and waiting for each."""

    def __init__(self, port: int, **auth: str) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
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
