"""Agents → Mosquitto → IngestService → InfluxSink → VictoriaMetrics, through a 20 s outage.

Every reading an agent got acknowledged by the broker must end up in
VictoriaMetrics exactly once, although the database is down for 20 s while the
agents keep sampling and publishing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from aggregator.ingest import IngestService
from aggregator.sinks import InfluxSink, InfluxTarget
from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge_app.servers import VictoriaMetrics
from tests.integration.fixtures_mqtt import BrokerProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "outage"
DEVICES = ("pump-a", "pump-b", "pump-c")


def acknowledged_readings(store_path: Path, device: str) -> Counter[tuple[str, int]]:
    """(device, seq) of every reading the broker acknowledged (the agent marked it sent)."""
    with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT seq FROM readings WHERE sent = 1").fetchall()
    return Counter((device, int(r[0])) for r in rows)


def stored_readings(vm: VictoriaMetrics) -> Counter[tuple[str, int]]:
    """(device, seq) of every telemetry sample in VictoriaMetrics (the seq field's value)."""
    vm.force_flush()
    out: Counter[tuple[str, int]] = Counter()
    for series in vm.export(f'{{__name__="telemetry_seq",fleet="{FLEET}"}}'):
        device = series["metric"]["device"]
        for value in series["values"]:
            out[(device, int(value))] += 1
    return out


@pytest.mark.timeout(180)
def test_database_outage_with_agents_publishing_loses_nothing(
    mosquitto: BrokerProcess, victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    endpoint = BrokerEndpoint.from_url(mosquitto.url)
    sink = InfluxSink(
        InfluxTarget.v2(victoria_metrics.url, org="fedge", bucket="fedge", token="t"),  # noqa: S106 - local test server
        tmp_path / "spool.sqlite",
        batch_size=500,
        flush_interval_ms=100,
        max_retries=1,
        retry_interval_ms=200,
        max_retry_delay_ms=500,
        max_retry_time_ms=1_000,
        request_timeout_ms=2_000,
        replay_backoff_s=(0.2, 1.0),
    )
    ingest = IngestService(PahoTransport(endpoint, client_id="ingest"), sink, fleet=FLEET)
    ingest.start()
    stop = threading.Event()
    agents, threads = [], []
    for i, device in enumerate(DEVICES):
        cfg = AgentConfig(
            fleet=FLEET,
            device=device,
            broker=endpoint,
            store_path=tmp_path / f"{device}.sqlite",
            sample_interval_s=0.02,
            telemetry_interval_s=0.2,
            telemetry_batch=50,
        )
        agent = EdgeAgent(
            cfg,
            transport=PahoTransport(endpoint, client_id=device),
            source=SimulatedSensorSource(profile=SiteProfile(), seed=i),
            store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
        )
        agents.append(agent)
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        victoria_metrics.stop()
        time.sleep(20)  # the agents keep sampling and publishing all along
        written_during_outage = ingest.stats.points_written
        victoria_metrics.start()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        for agent in agents:
            agent.store.close()

    expected: Counter[tuple[str, int]] = Counter()
    for device in DEVICES:
        expected += acknowledged_readings(tmp_path / f"{device}.sqlite", device)
    try:
        assert wait_until(
            lambda: sum(stored_readings(victoria_metrics).values()) >= sum(expected.values()),
            timeout=60,
            interval=0.5,
        ), "the spool did not drain into VictoriaMetrics after the outage"
    finally:
        ingest.stop()
        sink.close()

    got = stored_readings(victoria_metrics)
    assert sum(expected.values()) > 1500  # ~26 s x 3 devices at up to 50 Hz
    assert written_during_outage > 500  # ingestion went on during the outage (to the spool)
    missing = expected - got
    doubled = {k: n for k, n in got.items() if n > 1}
    assert not missing, f"{sum(missing.values())} readings lost, e.g. {list(missing)[:3]}"
    assert not doubled, f"{len(doubled)} readings stored twice, e.g. {list(doubled)[:3]}"
    assert ingest.stats.rejected_total == 0
