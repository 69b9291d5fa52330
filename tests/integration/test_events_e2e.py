"""Maintenance events end to end, with real processes all the way.

``fedge agent event`` (a subprocess) writes a failure into a *running* agent's SQLite
store; the agent picks it up without a restart, closes the machine's life there and
publishes the event on ``devices/<device>/events`` through a real Mosquitto; an
operator tool publishes a repair on the same topic, which the agent stores once. The
ingest service turns both into ``event`` points in a real InfluxDB 1.x, and the
dashboards' annotation queries return them: what Grafana would draw.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from aggregator.ingest import IngestService
from aggregator.sinks import SinkStats
from dashboards import annotation_queries
from edge_agent.sources import SimulatedSensorSource
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.data.simulator import SiteProfile
from fedge.errors import SinkError
from fedge.lives import MaintenanceEvent
from fedge.messages import encode_message
from fedge.points import Point, lines, seconds_to_ns
from fedge.topics import Topics
from fedge_app.servers import InfluxDB1, Mosquitto, ServerError
from fedge_app.wiring import agent_client_id, build_agent, mqtt_transport
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
DEVICE = "pump-7"
DB = "events"


class InfluxV1Sink:
    """Points to a real InfluxDB 1.x over its v1 ``/write`` (the Debian influxd is 1.6,
    older than the v2 compatibility API the production InfluxSink speaks)."""

    def __init__(self, server: InfluxDB1, db: str) -> None:
        self.server = server
        self.db = db
        self.written = 0
        self._lock = threading.Lock()

    @property
    def accepts_line_protocol(self) -> bool:
        return False

    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        with self._lock:
            try:
                self.server.write(self.db, lines(points))
            except ServerError as exc:
                raise SinkError(f"influxd refused the write: {exc}") from exc
            self.written += len(points)

    def flush(self, timeout: float = 10.0) -> None:
        return None

    def close(self) -> None:
        return None

    @property
    def stats(self) -> SinkStats:
        return SinkStats(points_written=self.written)


def lives_in_store(path: Path) -> list[tuple[int, str | None]]:
    """(unit, end_kind) of the agent's lives, read from a second connection."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [
            (int(u), k) for u, k in db.execute("SELECT unit, end_kind FROM lives ORDER BY unit")
        ]


def event_flags(path: Path) -> dict[str, tuple[int, int]]:
    """event_id -> (sent, applied) in the agent's store."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT event_id, sent, applied FROM events").fetchall()
    return {str(e): (int(s), int(a)) for e, s, a in rows}


def annotation_rows(server: InfluxDB1, start: float) -> dict[str, list[dict[str, object]]]:
    """What each annotation of the device dashboard returns, Grafana's macros substituted."""
    out: dict[str, list[dict[str, object]]] = {}
    for uid, name, query in annotation_queries():
        if uid != "fedge-device":
            continue
        q = (
            query.replace("$timeFilter", f"time >= {int(start * 1000)}ms and time <= now() + 1h")
            .replace("$fleet", FLEET)
            .replace("$device", DEVICE)
        )
        (statement,) = server.query(q, db=DB)["results"]
        assert "error" not in statement, statement
        out[name] = [
            dict(zip(s["columns"], row, strict=True))
            for s in statement.get("series", [])
            for row in s["values"]
        ]
    return out


@pytest.mark.timeout(120)
def test_cli_and_operator_events_reach_the_agent_the_broker_and_the_annotations(
    mosquitto: Mosquitto, influxdb_v1: InfluxDB1, tmp_path: Path
) -> None:
    started = time.time() - 60
    endpoint = BrokerEndpoint.from_url(mosquitto.url)
    influxdb_v1.create_database(DB)
    sink = InfluxV1Sink(influxdb_v1, DB)
    ingest = IngestService(mqtt_transport(endpoint, client_id="ingest"), sink, fleet=FLEET)
    ingest.start()
    cfg = AgentConfig(
        fleet=FLEET,
        device=DEVICE,
        broker=endpoint,
        store_path=tmp_path / "agent.sqlite",
        sample_interval_s=0.05,
        telemetry_interval_s=0.2,
    )
    agent = build_agent(
        cfg,
        transport=mqtt_transport(endpoint, client_id=agent_client_id(cfg)),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=3),
    )
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name=DEVICE)
    thread.start()
    operator = mqtt_transport(endpoint, client_id="operator-tool")
    try:
        assert wait_until(lambda: agent.stats.readings >= 20, timeout=20)
        # 1. The CLI, from another process, while the agent runs.
        cli = subprocess.run(
            [sys.executable, "-m", "fedge_app.cli", "agent", "event", "--kind", "failure",
             "--note", "bearing seized", "--store", str(cfg.store_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert wait_until(lambda: (0, "failure") in lives_in_store(cfg.store_path), timeout=10)
        # 2. An operator tool on the device's events topic (QoS 1, sent twice: redelivery).
        repair = MaintenanceEvent.new(
            fleet=FLEET,
            device=DEVICE,
            kind="repair",
            ts=time.time(),
            source="operator",
            note="bearing replaced",
        )
        operator.connect(on_message=lambda m: None)
        for _ in range(2):
            assert operator.publish(Topics(FLEET).events(DEVICE), encode_message(repair)).wait(5)
        assert wait_until(lambda: repair.event_id in event_flags(cfg.store_path), timeout=10)
        # 3. Both events in InfluxDB, where the annotations find them.
        assert wait_until(
            lambda: all(len(v) == 1 for v in annotation_rows(influxdb_v1, started).values()),
            timeout=20,
        ), annotation_rows(influxdb_v1, started)
        # The next life started after the failure; the repair closed it, censored.
        assert wait_until(
            lambda: lives_in_store(cfg.store_path)[:2] == [(0, "failure"), (1, "repair")],
            timeout=10,
        ), lives_in_store(cfg.store_path)
    finally:
        operator.close()
        stop.set()
        thread.join(timeout=10)
        agent.store.close()
        ingest.stop(timeout=5)
    rows = annotation_rows(influxdb_v1, started)
    (failure,) = rows["Failures"]
    (repaired,) = rows["Repairs and replacements"]
    assert (failure["note"], failure["kind"], failure["device"], failure["source"]) == (
        "bearing seized",
        "failure",
        DEVICE,
        "cli",
    )
    assert (repaired["note"], repaired["source"]) == ("bearing replaced", "operator")
    assert repaired["time"] == seconds_to_ns(repair.ts)
    flags = event_flags(cfg.store_path)
    assert len(flags) == 2  # the redelivered repair is stored once
    assert set(flags.values()) == {(1, 1)}  # published (the CLI's) or from the broker; applied
    assert agent.maintenance.stats.events_received == 1
