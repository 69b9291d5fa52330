"""An agent whose broker is down at start keeps sampling and connects when it comes up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from edge_agent.sources import SimulatedSensorSource
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.data.simulator import SiteProfile
from fedge.messages import TelemetryBatch, decode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto
from fedge_app.wiring import build_agent
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration


def test_agent_retries_a_broker_that_is_down_at_start_and_loses_no_reading(
    tmp_path: Path,
) -> None:
    port = free_port()
    endpoint = BrokerEndpoint(host="127.0.0.1", port=port)
    cfg = AgentConfig(
        fleet="down",
        device="pump-1",
        broker=endpoint,
        store_path=tmp_path / "agent.sqlite",
        sample_interval_s=0.02,
        telemetry_interval_s=0.2,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
    )
    transport = PahoTransport(endpoint, client_id="down-pump-1", connect_timeout=1.0)
    agent = build_agent(
        cfg, transport=transport, source=SimulatedSensorSource(profile=SiteProfile(), seed=3)
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run(stop)
        except BaseException as exc:  # the test fails on any escape from the thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    broker = Mosquitto(tmp_path / "broker", port=port)
    try:
        # Down for a while: the agent retries (with backoff) and samples into its store.
        ok = wait_until(lambda: agent.stats.connect_failures >= 2, timeout=15)
        assert ok, (agent.stats, errors, thread.is_alive())
        offline_readings = agent.stats.readings
        assert offline_readings > 10
        assert agent.stats.last_error is not None and "unreachable" in agent.stats.last_error
        assert thread.is_alive() and not errors
        broker.start()
        received: list[InboundMessage] = []
        probe = PahoTransport(endpoint, client_id="probe")
        probe.connect(on_message=received.append)
        probe.subscribe(Topics("down").telemetry("pump-1"))
        try:
            # Every reading taken while the broker was down arrives, in order, once.
            def seqs() -> list[int]:
                return [
                    r.seq
                    for m in received
                    for r in decode_message(TelemetryBatch, m.payload).readings
                ]

            assert wait_until(lambda: len(seqs()) >= offline_readings, timeout=30)
            got = seqs()
            assert got == sorted(got) and len(set(got)) == len(got)
            assert got[:offline_readings] == list(range(1, offline_readings + 1))
        finally:
            probe.close()
    finally:
        stop.set()
        thread.join(timeout=10)
        broker.close()
    assert not thread.is_alive() and not errors


def test_agent_stops_promptly_while_the_broker_is_still_down(tmp_path: Path) -> None:
    endpoint = BrokerEndpoint(host="127.0.0.1", port=free_port())
    cfg = AgentConfig(
        fleet="down", device="pump-2", broker=endpoint, store_path=tmp_path / "a.sqlite"
    )
    agent = build_agent(
        cfg,
        transport=PahoTransport(endpoint, client_id="down-pump-2", connect_timeout=0.5),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=4),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    assert wait_until(lambda: agent.stats.connect_failures >= 1, timeout=10)
    started = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
