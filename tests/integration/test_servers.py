"""The real-server harness (fedge_app.servers): kill -9 and restart on the same port, bounded
start with the log shown on failure, persistence across restarts, lost-port retry."""

from __future__ import annotations

import os
import queue
import socket
import time
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.transport import InboundMessage
from fedge_app.servers import (
    InfluxDB1,
    Mosquitto,
    ServerError,
    ServerNotInstalledError,
    VictoriaMetrics,
    find_binary,
    free_port,
    http_request,
    wait_for_http,
    wait_for_port,
)

pytestmark = pytest.mark.integration


def retained(url: str, topic: str) -> bytes | None:
    """The retained payload on ``topic`` (None if the broker has none within 3 s)."""
    inbox: queue.Queue[InboundMessage] = queue.Queue()
    client = PahoTransport(BrokerEndpoint.from_url(url), client_id=f"probe-{time.monotonic_ns()}")
    client.connect(on_message=inbox.put)
    try:
        client.subscribe(topic, qos=1)
        try:
            return inbox.get(timeout=3.0).payload
        except queue.Empty:
            return None
    finally:
        client.close()


def publish_retained(url: str, topic: str, payload: bytes) -> None:
    client = PahoTransport(BrokerEndpoint.from_url(url), client_id="publisher")
    client.connect(on_message=lambda m: None)
    try:
        assert client.publish(topic, payload, qos=1, retain=True).wait(5.0)
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_mosquitto_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    with Mosquitto(tmp_path, persistence_dir=tmp_path / "data") as broker:
        port, pid = broker.port, broker.pid
        publish_retained(broker.url, "t/kept", b"before")
        broker.restart()  # graceful: Mosquitto saves its database on SIGTERM
        assert broker.port == port and broker.pid != pid
        assert retained(broker.url, "t/kept") == b"before"

        publish_retained(broker.url, "t/lost", b"unsaved")
        broker.kill()  # SIGKILL: no save (no autosave_interval configured)
        assert not broker.running and broker.pid is None
        with pytest.raises(ServerError):
            wait_for_port(port, timeout=0.5)
        broker.start()
        assert broker.port == port
        assert retained(broker.url, "t/kept") == b"before"
        assert retained(broker.url, "t/lost") is None
    # As root, Mosquitto is kept from switching to a user that cannot write tmp_path/data.
    assert (tmp_path / "mosquitto.conf").read_text().startswith(
        "user root\n" if os.geteuid() == 0 else "listener"
    )
    # As the shipped config: the broker sends small packets without Nagle's delay.
    assert "set_tcp_nodelay true" in (tmp_path / "mosquitto.conf").read_text().splitlines()


@pytest.mark.timeout(60)
def test_victoria_metrics_sigkill_then_start_on_the_same_port_and_data(tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path)
    with vm:
        status, _ = http_request(
            f"{vm.url}/api/v2/write?bucket=b", data=b"m,device=d f=1.5 1750000000000000000"
        )
        assert status == 204
        vm.stop()  # graceful: flushed to disk
        vm.start()
        vm.restart(kill=True)  # SIGKILL, then back on the same port and data
        vm.force_flush()
        (series,) = vm.export('{__name__="m_f"}')
        assert (series["metric"]["device"], series["values"]) == ("d", [1.5])
    assert not vm.running
    assert tmp_path.exists()  # a root given by the caller is left in place


def test_own_temp_dir_is_removed_on_close() -> None:
    with Mosquitto() as broker:
        root = broker.root
        assert root.is_dir() and broker.log_path.parent == root
    assert not root.exists()


def test_a_server_that_refuses_its_config_fails_fast_with_its_log(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config=["no_such_option 1"])
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with status") as info:
        broker.start(timeout=10.0)
    assert time.monotonic() - started < 5.0
    assert "no_such_option" in str(info.value)  # Mosquitto's own complaint, from the log
    assert not broker.running


def test_a_given_port_that_is_taken_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = Mosquitto(tmp_path, port=port)
        try:
            with pytest.raises(ServerError, match=r"(?i)address already in use"):
                broker.start()
        finally:
            broker.close()


def test_a_first_start_that_lost_its_free_port_retries_on_a_fresh_one(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    with socket.socket() as thief:  # someone else took the port between pick and start
        thief.bind(("127.0.0.1", broker.port))
        thief.listen()
        lost = broker.port
        with broker:
            assert broker.port != lost
            wait_for_port(broker.port, timeout=1.0)


def test_missing_binary(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.binary = None
    with pytest.raises(ServerNotInstalledError, match="mosquitto is not installed"):
        broker.start()
    assert find_binary("fedge-no-such-server") is None


def test_binaries_are_found_in_sbin_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("this machine has no /usr/sbin/mosquitto")
    monkeypatch.setenv("PATH", "")
    assert find_binary("mosquitto") == "/usr/sbin/mosquitto"


@pytest.mark.timeout(60)
def test_influxdb1_generated_config_answers_on_its_ports(tmp_path: Path) -> None:
    with InfluxDB1(tmp_path) as influx:
        wait_for_http(f"{influx.url}/ping", expect=204, timeout=1.0)
        influx.create_database("t")
        influx.write("t", "m,device=d f=2.5 1750000000000000000")
        result = influx.query('SELECT "f" FROM "m"', db="t")
        assert result["results"][0]["series"][0]["values"] == [[1750000000000000000, 2.5]]
        assert f'"127.0.0.1:{influx.rpc_port}"' in influx.config_path.read_text()


def test_helpers_are_bounded_and_loopback_only() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ServerError, match="not ready after"):
        wait_for_port(port, timeout=0.3)
    with pytest.raises(ServerError, match="not ready after"):
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=0.3)
    assert time.monotonic() - started < 5.0
    with pytest.raises(ServerError):
        http_request(f"http://127.0.0.1:{port}/")
    with pytest.raises(ValueError, match="loopback"):
        http_request("http://example.com/")
