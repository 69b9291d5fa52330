"""A new user's path: copy the README's Modbus example, point it at the device, run
`fedge agent` and `fedge ingest`, and see the device's readings in the telemetry store."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.sinks import SqliteSink
from fedge_app.servers import Mosquitto
from tests.integration.test_source_modbus import ModbusServerThread
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FEDGE = [sys.executable, "-m", "fedge_app.cli"]


@pytest.fixture
def drive() -> Iterator[ModbusServerThread]:
    """A pump drive: 12.34 A (in cA), 41.5 degC (float32), 1480 rpm (int32, low word first)."""
    server = ModbusServerThread(free_port(), registers=200)
    server.start()
    server.write("input", 0, [1234])
    server.write("input", 2, list(struct.unpack(">HH", struct.pack(">f", 41.5))))
    high, low = struct.unpack(">HH", struct.pack(">i", 1480))
    server.write("holding", 100, [low, high])
    try:
        yield server
    finally:
        server.close()


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([*FEDGE, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_readme_modbus_example_reaches_the_telemetry_store(
    tmp_path: Path, mosquitto: Mosquitto, drive: ModbusServerThread
) -> None:
    example = (ROOT / "deploy" / "examples" / "source-modbus.toml").read_text()
    # What the user edits: the device's address, and the agent's own settings on top.
    example = example.replace('host = "192.168.10.20"', 'host = "127.0.0.1"')
    example = example.replace("port = 502", f"port = {drive.port}")
    example = example.replace("poll_interval_s = 1.0", "poll_interval_s = 0.1")
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        'fleet = "plant"\ndevice = "pump-03"\nsample_interval_s = 0.1\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n' + example
    )
    telemetry = tmp_path / "telemetry.sqlite"
    ingest = _spawn(
        ["ingest", "--broker", mosquitto.url, "--fleet", "plant", "--sqlite", str(telemetry),
         "--spool", str(tmp_path / "spool.sqlite")],
        tmp_path / "ingest.log",
    )
    agent = _spawn(
        ["agent", "--config", str(agent_toml), "--store", str(tmp_path / "agent.sqlite")],
        tmp_path / "agent.log",
    )
    try:
        def stored() -> int:
            if not telemetry.exists():
                return 0
            sink = SqliteSink(telemetry)
            try:
                return sink.count("telemetry")
            finally:
                sink.close()

        ok = wait_until(lambda: stored() >= 5, timeout=45, interval=0.5)
        assert ok, (tmp_path / "agent.log").read_text()[-3000:]
    finally:
        _stop(agent)
        _stop(ingest)
    sink = SqliteSink(telemetry)
    try:
        point = sink.query("telemetry", tags={"device": "pump-03"}, limit=1)[0]
    finally:
        sink.close()
    fields = dict(point.fields)
    assert fields["motor_current_a"] == pytest.approx(12.34)
    assert fields["bearing_temp_c"] == pytest.approx(41.5)
    assert fields["speed_rpm"] == pytest.approx(1480.0)
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_an_unreachable_device_shows_in_the_agent_status_and_the_agent_keeps_running(
    tmp_path: Path,
) -> None:
    from edge_agent.sources import source_from_table
    from fedge.config import AgentConfig
    from fedge.messages import DeviceStatus, decode_message
    from fedge.topics import Topics
    from fedge.transport import InboundMessage, InMemoryBroker
    from fedge_app.wiring import build_agent

    broker = InMemoryBroker()
    statuses: list[InboundMessage] = []
    watcher = broker.transport("watcher")
    watcher.connect(on_message=statuses.append)
    watcher.subscribe(Topics("plant").all_status)
    cfg = AgentConfig(
        fleet="plant", device="pump-09", store_path=tmp_path / "a.sqlite",
        source={
            "kind": "modbus", "host": "127.0.0.1", "port": free_port(), "timeout_s": 0.2,
            "channels": [{"name": "temp", "address": 0}],
        },
    )
    agent = build_agent(
        cfg, transport=broker.transport("pump-09"), source=source_from_table(cfg.source)
    )
    agent.start()
    try:
        assert wait_until(lambda: agent.source.health().state == "reconnecting", timeout=15)
        for _ in range(20):
            agent.step(timeout=0.01)  # sampling a dead device never raises
        agent.publish_status()
        status = decode_message(DeviceStatus, statuses[-1].payload)
        assert status.state == "online" and status.source_state == "reconnecting"
        assert status.last_error is not None and status.last_error.startswith(
            "source reconnecting:"
        )
    finally:
        agent.stop()
        agent.store.close()
