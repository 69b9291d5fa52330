"""Every dashboard query runs on a real InfluxDB 1.x against data fedge itself produced.

Realistic agent and aggregator messages go through fedge's own ingest path
(IngestService → fedge.points) into a real ``influxd``; then every panel,
template-variable and annotation query of every dashboard is executed with
Grafana's macros substituted, and each must return at least one series with a
non-null value (the annotations: exactly the maintenance events they mark).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from aggregator.ingest import IngestService
from aggregator.sinks import MemorySink
from dashboards import all_queries, annotation_queries, variable_queries
from fedge.lives import MaintenanceEvent
from fedge.messages import (
    DeviceStatus,
    Prediction,
    Reading,
    RoundSummary,
    TelemetryBatch,
    WireModel,
    encode_message,
)
from fedge.points import Point, lines, seconds_to_ns
from fedge.topics import Topics
from fedge.transport import InMemoryBroker
from fedge_app.servers import InfluxDB1
from tests.support import wait_until

pytestmark = pytest.mark.integration

DB = "fedge"
FLEET = "demo"
DEVICES = ("pump-01", "pump-02", "pump-03")
NOW = time.time()
START = NOW - 30 * 60
END = NOW - 60


EVENTS = (
    MaintenanceEvent.new(
        fleet=FLEET, device="pump-03", kind="failure", ts=START + 20 * 60, source="simulator",
        note="the unit ran to failure",
    ),
    MaintenanceEvent.new(
        fleet=FLEET, device="pump-03", kind="repair", ts=START + 20 * 60, source="simulator",
        note="the technician repaired the machine",
    ),
    MaintenanceEvent.new(
        fleet=FLEET, device="pump-01", kind="replace", ts=START + 25 * 60, source="cli",
        note="new impeller",
    ),
)  # fmt: skip


def fleet_messages() -> Iterator[tuple[str, WireModel]]:
    """Half an hour of a three-device fleet: telemetry, predictions, status, rounds."""
    topics = Topics(FLEET)
    for d, device in enumerate(DEVICES):
        readings = []
        for seq in range(170):
            ts = START + seq * 10
            wear = seq / 170
            readings.append(
                Reading(
                    seq=seq,
                    ts=ts,
                    cycle=seq // 6,
                    values={
                        "temp": 60 + 15 * wear + math.sin(seq / 5),
                        "vibration": 0.02 + 0.05 * wear * (d + 1),
                        "pressure": 3.0 - 0.2 * wear,
                        "rpm": 1450.0 + 10 * math.cos(seq / 7),
                    },
                )
            )
            if len(readings) == 20:
                yield (
                    topics.telemetry(device),
                    TelemetryBatch(
                        fleet=FLEET, device=device, site="plant-a", unit=d + 1, readings=readings
                    ),
                )
                readings = []
        if readings:
            yield (
                topics.telemetry(device),
                TelemetryBatch(
                    fleet=FLEET, device=device, site="plant-a", unit=d + 1, readings=readings
                ),
            )
        for minute in range(29):
            ts = START + minute * 60 + 5
            rul = max(0.0, 120.0 - minute * (d + 1) * 1.5)
            yield (
                topics.prediction(device),
                Prediction(
                    fleet=FLEET,
                    device=device,
                    ts=ts,
                    model_version=1 + minute // 5,
                    rul=rul,
                    failure_probability=min(1.0, (120 - rul) / 120),
                    horizon=30,
                    alert=rul < 60,
                    health=None if minute < 3 else max(0.0, 1.0 - minute * (d + 1) / 60),
                    anomaly=minute * (d + 1) > 30,
                    anomaly_reason="vibration z=+4.2" if minute * (d + 1) > 30 else None,
                ),
            )
            yield (
                topics.status(device),
                DeviceStatus(
                    fleet=FLEET,
                    device=device,
                    state="online",
                    ts=ts,
                    site="plant-a",
                    agent_version="0.1.0",
                    model_version=1 + minute // 5,
                    buffer_depth=minute % 4 * d,
                    cpu_percent=12.5 + d,
                    memory_mb=80.0 + minute,
                ),
            )
    yield topics.status("pump-02"), DeviceStatus(fleet=FLEET, device="pump-02", state="offline")
    for event in EVENTS:
        yield topics.events(event.device), event
    for round_id in range(7):
        failed = round_id == 3
        yield (
            topics.round_summary,
            RoundSummary(
                fleet=FLEET,
                round_id=round_id,
                task="stats" if round_id == 0 else "train",
                ts=START + 60 + round_id * 240,
                outcome="failed" if failed else "completed",
                version=round_id + (0 if failed else 1),
                participants=0 if failed else 3,
                rejected=1 if round_id in (2, 5) else 0,
                rejected_by_reason={"norm_too_large": 1} if round_id in (2, 5) else {},
                num_examples=0 if failed else 3 * 512,
                train_loss=None if failed else 1 / (round_id + 1),
                val_error=None if failed else 40.0 / (round_id + 1),
                val_examples=256,
                bytes_received=0 if failed else 3 * 48_000,
                duration_s=2.5 + round_id,
                clipped=None if round_id == 0 else round_id % 2,
                dp_epsilon=None if round_id == 0 else 0.5 * round_id,
                dp_delta=None if round_id == 0 else 1e-5,
                dp_epsilon_local=None if round_id == 0 else 2.0 * round_id,
            ),
        )


@pytest.fixture(scope="module")
def loaded(influxdb_v1: InfluxDB1) -> list[Point]:
    """The fleet's messages through IngestService, written to InfluxDB via v1 /write."""
    broker = InMemoryBroker()
    sink = MemorySink()
    # The ingest clock sits at END so the "offline" status lands inside the data window.
    service = IngestService(broker.transport("ingest"), sink, fleet=FLEET, clock=lambda: END)
    service.start()
    publisher = broker.transport("agent")
    publisher.connect(on_message=lambda m: None)
    count = 0
    for topic, message in fleet_messages():
        publisher.publish(topic, encode_message(message))
        count += 1
    try:
        assert wait_until(lambda: service.stats.accepted == count, timeout=10), service.stats
    finally:
        publisher.close()
        service.stop(timeout=5)
    assert service.stats.rejected == {} and service.stats.duplicates == 0
    points = sink.points
    influxdb_v1.create_database(DB)
    for i in range(0, len(points), 2000):
        influxdb_v1.write(DB, lines(points[i : i + 2000]))
    return points


def substitute(query: str, *, device: str = "pump-03") -> str:
    """What Grafana sends for a query (single-value variables, fixed absolute range)."""
    time_filter = f"time >= {int(START * 1000) - 1000}ms and time <= {int(NOW * 1000)}ms"
    return (
        query.replace("$timeFilter", time_filter)
        .replace("$__interval", "10s")
        .replace("$fleet", FLEET)
        .replace("$device", device)
    )


def non_null_series(result: dict[str, object]) -> list[dict[str, object]]:
    (statement,) = result["results"]  # type: ignore[misc]
    assert "error" not in statement, statement["error"]
    series: list[dict[str, object]] = statement.get("series", [])
    return [
        s
        for s in series
        if any(v is not None for row in s["values"] for v in row[1:])  # type: ignore[attr-defined]
    ]


def test_data_loaded(loaded: list[Point], influxdb_v1: InfluxDB1) -> None:
    measurements = {p.measurement for p in loaded}
    assert measurements == {
        "telemetry",
        "prediction",
        "device_health",
        "fl_round",
        "alert",
        "event",
    }
    result = influxdb_v1.query('SELECT count("seq") FROM "telemetry"', db=DB)
    assert result["results"][0]["series"][0]["values"][0][1] == 3 * 170


ALL = all_queries()


@pytest.mark.parametrize(("dashboard", "panel", "query"), ALL, ids=[f"{d}:{p}" for d, p, _ in ALL])
def test_every_panel_query_returns_data(
    loaded: list[Point], influxdb_v1: InfluxDB1, dashboard: str, panel: str, query: str
) -> None:
    series = non_null_series(influxdb_v1.query(substitute(query), db=DB, epoch="ms"))
    assert series, f"{dashboard} / {panel}: no data for {substitute(query)}"


VARIABLES = variable_queries()


@pytest.mark.parametrize(
    ("dashboard", "name", "query"), VARIABLES, ids=[f"{d}:${n}" for d, n, _ in VARIABLES]
)
def test_every_template_variable_lists_values(
    loaded: list[Point], influxdb_v1: InfluxDB1, dashboard: str, name: str, query: str
) -> None:
    series = non_null_series(influxdb_v1.query(substitute(query), db=DB))
    values = {row[1] for s in series for row in s["values"]}  # type: ignore[attr-defined]
    assert values == ({FLEET} if name == "fleet" else set(DEVICES))


ANNOTATIONS = annotation_queries()


@pytest.mark.parametrize(
    ("dashboard", "name", "query"), ANNOTATIONS, ids=[f"{d}:{n}" for d, n, _ in ANNOTATIONS]
)
def test_every_annotation_query_returns_its_maintenance_events(
    loaded: list[Point], influxdb_v1: InfluxDB1, dashboard: str, name: str, query: str
) -> None:
    """What Grafana draws: one marker per event, at the event's time, with its note."""
    device = "pump-03"
    series = non_null_series(influxdb_v1.query(substitute(query, device=device), db=DB, epoch="ns"))
    rows = [
        dict(zip(s["columns"], row, strict=True))  # type: ignore[call-overload]
        for s in series
        for row in s["values"]  # type: ignore[attr-defined]
    ]
    failures = name == "Failures"
    expected = [
        e
        for e in EVENTS
        if (e.kind == "failure") == failures and (dashboard == "fedge-fleet" or e.device == device)
    ]
    assert expected, "the test data must exercise every annotation"
    got = sorted((r["time"], r["note"], r["kind"], r["device"], r["source"]) for r in rows)
    assert got == sorted(
        (seconds_to_ns(e.ts), e.note, e.kind, e.device, e.source) for e in expected
    )


def test_device_variable_drives_the_drill_down(loaded: list[Point], influxdb_v1: InfluxDB1) -> None:
    """Each device selected in $device gets its own numbers, not the fleet's."""
    query = 'SELECT count("seq") FROM "telemetry" WHERE "device" =~ /^$device$/ AND $timeFilter'
    for device in DEVICES:
        (series,) = non_null_series(influxdb_v1.query(substitute(query, device=device), db=DB))
        assert series["values"][0][1] == 170  # type: ignore[index]


def test_field_types_are_stable_in_influxdb(loaded: list[Point], influxdb_v1: InfluxDB1) -> None:
    """Ints stay ints, floats stay floats, once InfluxDB has seen them."""
    result = influxdb_v1.query("SHOW FIELD KEYS", db=DB)
    types = {
        (s["name"], key): kind for s in result["results"][0]["series"] for key, kind in s["values"]
    }
    assert types[("telemetry", "seq")] == "integer"
    assert types[("telemetry", "cycle")] == "integer"
    assert types[("telemetry", "rpm")] == "float"
    assert types[("prediction", "alert")] == "boolean"
    assert types[("prediction", "horizon")] == "integer"
    assert types[("device_health", "online")] == "integer"
    assert types[("device_health", "cpu_percent")] == "float"
    assert types[("fl_round", "rejected_norm_too_large")] == "integer"
    assert types[("fl_round", "duration_s")] == "float"
    assert types[("alert", "message")] == "string"
    assert types[("prediction", "health")] == "float"
    assert types[("prediction", "anomaly")] == "boolean"
    assert types[("event", "note")] == "string"
    assert types[("event", "event_id")] == "string"


def test_escaped_point_round_trips_through_influxdb(influxdb_v1: InfluxDB1) -> None:
    """The encoder's escaping is read back by a real InfluxDB exactly as meant."""
    db = "escapes"
    influxdb_v1.create_database(db)
    text = 'say "hi" \\ path\nnext'
    point = Point.of(
        "my meas,x",
        {"tag key": "a,b=c d"},
        {"f=1,2 3": text, "n": -5, "b": True, "big": 1e20, "small": 1e-05},
        1_700_000_000_123_456_000,
    )
    influxdb_v1.write(db, point.to_line())
    result = influxdb_v1.query('SELECT * FROM "my meas,x"', db=db)
    (series,) = result["results"][0]["series"]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row == {
        "time": 1_700_000_000_123_456_000,
        "tag key": "a,b=c d",
        # Line protocol cannot carry a raw newline: it is kept as a visible "\n".
        "f=1,2 3": text.replace("\n", "\\n"),
        "n": -5,
        "b": True,
        "big": 1e20,
        "small": 1e-05,
    }
