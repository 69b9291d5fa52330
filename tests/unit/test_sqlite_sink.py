"""SqliteSink: the zero-setup sink keeps the InfluxDB schema and write semantics."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.sinks import Sink, SqliteSink
from fedge.errors import SinkError
from fedge.messages import Prediction, Reading, TelemetryBatch
from fedge.points import Point, prediction_points, telemetry_points

TS = 1_700_000_000.0


def batch(device: str, seqs: range) -> TelemetryBatch:
    return TelemetryBatch(
        fleet="demo",
        device=device,
        unit=1,
        readings=[
            Reading(seq=s, ts=TS + s, cycle=s, values={"temp": 20.0 + s, "vib": 0.5}) for s in seqs
        ],
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SqliteSink]:
    s = SqliteSink(tmp_path / "fedge.db")
    yield s
    s.close()


def test_is_a_sink(sink: SqliteSink) -> None:
    assert isinstance(sink, Sink)


def test_write_and_query_back_with_types(sink: SqliteSink) -> None:
    points = telemetry_points(batch("pump-01", range(3))) + telemetry_points(
        batch("pump-02", range(2))
    )
    sink.write(points)
    assert sink.count() == 5 and sink.count("telemetry") == 5
    got = sink.query("telemetry", tags={"device": "pump-01"})
    assert got == telemetry_points(batch("pump-01", range(3)))
    first = got[0].field_dict
    assert isinstance(first["seq"], int) and isinstance(first["temp"], float)
    assert [p.time_ns for p in sink.query("telemetry", start_ns=got[1].time_ns)] == sorted(
        [got[1].time_ns, got[2].time_ns, *(p.time_ns for p in points[4:])]
    )
    assert len(sink.query("telemetry", limit=2)) == 2
    assert sink.stats.points_written == 5 and sink.stats.batches_written == 1


def test_bool_and_string_fields_round_trip(sink: SqliteSink) -> None:
    pred = Prediction(
        fleet="demo",
        device="d",
        ts=TS,
        model_version=2,
        rul=5.0,
        failure_probability=0.9,
        horizon=10,
        alert=True,
    )
    sink.write(prediction_points(pred))
    (stored,) = sink.query("prediction")
    assert stored.field_dict["alert"] is True
    (alert,) = sink.query("alert")
    assert alert.tag_dict == {"device": "d", "fleet": "demo", "kind": "failure_predicted"}
    assert isinstance(alert.field_dict["message"], str)


def test_same_point_twice_is_one_row_with_merged_fields(sink: SqliteSink) -> None:
    """InfluxDB semantics: measurement + tags + time identify a point; fields merge."""
    sink.write([Point.of("m", {"d": "x"}, {"a": 1.0, "b": 2}, 10)])
    sink.write([Point.of("m", {"d": "x"}, {"a": 1.0, "b": 2}, 10)])  # redelivery
    sink.write([Point.of("m", {"d": "x"}, {"b": 3, "c": "new"}, 10)])
    sink.write([Point.of("m", {"d": "y"}, {"a": 9.0}, 10)])  # other series, same time
    assert sink.count("m") == 2
    (x,) = sink.query("m", tags={"d": "x"})
    assert x.field_dict == {"a": 1.0, "b": 3, "c": "new"}


def test_a_stored_reading_is_never_overwritten_and_repeats_are_counted(sink: SqliteSink) -> None:
    first = telemetry_points(batch("pump-01", range(3)))
    sink.write(first)
    # A redelivery of seqs 1-2 plus a new seq 3: two repeats, one new row.
    sink.write(telemetry_points(batch("pump-01", range(1, 4))))
    # Same device and instant as seq 0 but other values: a clash, the first one stays.
    clash = Point.of(
        "telemetry",
        first[0].tag_dict,
        {"temp": 99.0, "vib": 0.5, "seq": 0, "cycle": 0},
        first[0].time_ns,
    )
    sink.write([clash])
    assert sink.count("telemetry") == 4
    stored = sink.query("telemetry", tags={"device": "pump-01"})
    assert stored[0].field_dict["temp"] == 20.0
    assert [p.field_dict["seq"] for p in stored] == [0, 1, 2, 3]
    stats = sink.stats
    assert (stats.points_written, stats.points_duplicate, stats.points_conflicting) == (4, 2, 1)


def test_repeats_within_one_write_keep_the_first(sink: SqliteSink) -> None:
    (p,) = telemetry_points(batch("pump-01", range(1)))
    other = Point.of("telemetry", p.tag_dict, {"temp": -1.0, "seq": 0}, p.time_ns)
    sink.write([p, p, other])
    (stored,) = sink.query("telemetry")
    assert stored == p
    assert (sink.stats.points_duplicate, sink.stats.points_conflicting) == (1, 1)


def test_rows_of_an_older_version_compare_by_value_not_key_order(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sink = SqliteSink(path)
    (p,) = telemetry_points(batch("pump-01", range(1)))
    sink.write([p])
    sink.close()
    db = sqlite3.connect(path)
    try:  # the same fields, keys in another order
        (fields,) = db.execute("SELECT fields FROM points").fetchone()
        reordered = json.dumps(dict(reversed(list(json.loads(fields).items()))))
        assert reordered != fields
        with db:
            db.execute("UPDATE points SET fields = ?", (reordered,))
    finally:
        db.close()
    sink = SqliteSink(path)
    try:
        sink.write([p])
        assert (sink.stats.points_duplicate, sink.stats.points_conflicting) == (1, 0)
    finally:
        sink.close()


def test_views_expose_tags_as_columns(tmp_path: Path) -> None:
    path = tmp_path / "fedge.db"
    sink = SqliteSink(path)
    sink.write(telemetry_points(batch("pump-01", range(2))))
    sink.close()
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT device, fleet, unit, json_extract(fields, '$.seq') FROM telemetry "
            "ORDER BY time_ns"
        ).fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert rows == [("pump-01", "demo", "1", 0), ("pump-01", "demo", "1", 1)]


def test_data_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "fedge.db"
    first = SqliteSink(path)
    first.write(telemetry_points(batch("d", range(4))))
    first.close()
    second = SqliteSink(path)
    try:
        assert second.count("telemetry") == 4
        raw = sqlite3.connect(path)
        tags = raw.execute("SELECT DISTINCT tags FROM points").fetchall()
        raw.close()
        assert [json.loads(t) for (t,) in tags] == [{"device": "d", "fleet": "demo", "unit": "1"}]
    finally:
        second.close()


def test_closed_sink_raises_sink_error(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "fedge.db")
    sink.close()
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write([Point.of("m", {}, {"v": 1.0}, 1)])


def test_unopenable_path_raises_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError):
        SqliteSink(blocker / "fedge.db")


def test_empty_write_and_flush_are_no_ops(sink: SqliteSink) -> None:
    sink.write([])
    sink.flush(0.1)
    assert sink.stats.points_written == 0
