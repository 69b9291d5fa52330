"""Exact line protocol for every measurement fedge writes (fedge.points)."""

from __future__ import annotations

import pytest

from fedge.errors import MessageError, SinkError
from fedge.lives import MaintenanceEvent
from fedge.messages import (
    DeviceStatus,
    Prediction,
    Reading,
    RoundSummary,
    TelemetryBatch,
    decode_message,
)
from fedge.points import (
    Point,
    event_points,
    health_points,
    lines,
    prediction_points,
    round_points,
    seconds_to_ns,
    telemetry_points,
)

TS = 1_700_000_000.25
TS_NS = 1_700_000_000_250_000_000


def test_telemetry_batch_one_point_per_reading_exact() -> None:
    batch = TelemetryBatch(
        fleet="demo",
        device="pump-01",
        site="plant-a",
        unit=3,
        readings=[
            Reading(seq=7, ts=TS, cycle=42, values={"temp": 71.5, "vibration": 0.012, "p": 3}),
            Reading(seq=8, ts=TS + 1, values={"temp": 71.25, "vibration": 1e-05, "p": 3.5}),
        ],
    )
    assert lines(telemetry_points(batch)) == (
        "telemetry,device=pump-01,fleet=demo,site=plant-a,unit=3 "
        "temp=71.5,vibration=0.012,p=3.0,seq=7i,cycle=42i 1700000000250000000\n"
        "telemetry,device=pump-01,fleet=demo,site=plant-a,unit=3 "
        "temp=71.25,vibration=1e-05,p=3.5,seq=8i 1700000001250000000"
    )


def test_telemetry_without_optional_tags() -> None:
    batch = TelemetryBatch(
        fleet="f", device="d", readings=[Reading(seq=0, ts=TS, values={"x": -0.5})]
    )
    assert [p.to_line() for p in telemetry_points(batch)] == [
        f"telemetry,device=d,fleet=f x=-0.5,seq=0i {TS_NS}"
    ]


@pytest.mark.parametrize("name", ["seq", "cycle", "device", "fleet", "site", "unit", "time"])
def test_reserved_sensor_names_are_refused(name: str) -> None:
    batch = TelemetryBatch(
        fleet="f", device="d", readings=[Reading(seq=0, ts=TS, values={name: 1.0})]
    )
    with pytest.raises(MessageError, match="reserved"):
        telemetry_points(batch)


def test_integer_json_sensor_values_stay_floats() -> None:
    # A sensor that happens to report 50 must not become an int field (type conflict).
    payload = (
        b'{"fleet":"f","device":"d","readings":[{"seq":1,"ts":1700000000,"values":{"rpm":50}}]}'
    )
    (point,) = telemetry_points(decode_message(TelemetryBatch, payload))
    assert point.field_dict["rpm"] == 50.0 and isinstance(point.field_dict["rpm"], float)
    assert point.to_line() == "telemetry,device=d,fleet=f rpm=50.0,seq=1i 1700000000000000000"


def test_prediction_without_alert() -> None:
    pred = Prediction(
        fleet="demo",
        device="pump-01",
        ts=TS,
        model_version=4,
        rul=87.5,
        failure_probability=0.05,
        horizon=30,
    )
    assert [p.to_line() for p in prediction_points(pred)] == [
        "prediction,device=pump-01,fleet=demo rul=87.5,failure_probability=0.05,"
        f"model_version=4i,horizon=30i,alert=false {TS_NS}"
    ]


def test_prediction_carries_unit_and_cycle_as_ints() -> None:
    pred = Prediction(
        fleet="demo",
        device="pump-01",
        ts=TS,
        model_version=4,
        rul=87.5,
        failure_probability=0.05,
        horizon=30,
        unit=3,
        cycle=141,
    )
    assert [p.to_line() for p in prediction_points(pred)] == [
        "prediction,device=pump-01,fleet=demo rul=87.5,failure_probability=0.05,"
        f"model_version=4i,horizon=30i,alert=false,unit=3i,cycle=141i {TS_NS}"
    ]


def test_prediction_with_alert_adds_alert_point() -> None:
    pred = Prediction(
        fleet="demo",
        device="pump-01",
        ts=TS,
        model_version=4,
        rul=12.0,
        failure_probability=0.875,
        horizon=30,
        alert=True,
    )
    assert [p.to_line() for p in prediction_points(pred)] == [
        "prediction,device=pump-01,fleet=demo rul=12.0,failure_probability=0.875,"
        f"model_version=4i,horizon=30i,alert=true {TS_NS}",
        "alert,device=pump-01,fleet=demo,kind=failure_predicted rul=12.0,"
        'failure_probability=0.875,message="pump-01: predicted RUL 12.0 cycles, failure '
        f'probability 88% within 30 cycles (model v4)" {TS_NS}',
    ]


def test_prediction_with_health_and_anomaly_adds_an_anomaly_alert() -> None:
    pred = Prediction(
        fleet="demo",
        device="pump-01",
        ts=TS,
        model_version=4,
        rul=87.5,
        failure_probability=0.05,
        horizon=30,
        health=0.25,
        anomaly=True,
        anomaly_reason="bearing_temp z=+6.1, vibration_rms z=+4.3",
    )
    assert [p.to_line() for p in prediction_points(pred)] == [
        "prediction,device=pump-01,fleet=demo rul=87.5,failure_probability=0.05,"
        f"model_version=4i,horizon=30i,alert=false,health=0.25,anomaly=true {TS_NS}",
        "alert,device=pump-01,fleet=demo,kind=anomaly rul=87.5,failure_probability=0.05,"
        'health=0.25,message="pump-01: anomaly: bearing_temp z=+6.1, vibration_rms z=+4.3" '
        f"{TS_NS}",
    ]


def test_prediction_with_a_healthy_score_says_no_anomaly() -> None:
    pred = Prediction(
        fleet="demo",
        device="pump-01",
        ts=TS,
        model_version=4,
        rul=87.5,
        failure_probability=0.05,
        horizon=30,
        health=1.0,
    )
    assert [p.to_line() for p in prediction_points(pred)] == [
        "prediction,device=pump-01,fleet=demo rul=87.5,failure_probability=0.05,"
        f"model_version=4i,horizon=30i,alert=false,health=1.0,anomaly=false {TS_NS}"
    ]


def test_event_point_is_stamped_with_the_event_time() -> None:
    event = MaintenanceEvent(
        fleet="demo",
        device="pump-01",
        kind="failure",
        ts=TS,
        note='bearing "seized"',
        event_id="0123456789ab4def8123456789abcdef",
        source="cli",
    )
    assert [p.to_line() for p in event_points(event)] == [
        'event,device=pump-01,fleet=demo,kind=failure note="bearing \\"seized\\"",'
        f'event_id="0123456789ab4def8123456789abcdef",source="cli" {TS_NS}'
    ]


def test_event_without_a_note_keeps_the_note_field_a_string() -> None:
    event = MaintenanceEvent(
        fleet="demo",
        device="pump-01",
        kind="repair",
        ts=TS,
        event_id="0123456789ab4def8123456789abcdef",
        source="simulator",
    )
    (point,) = event_points(event)
    assert point.field_dict == {
        "note": "",
        "event_id": "0123456789ab4def8123456789abcdef",
        "source": "simulator",
    }


def test_health_online_uses_status_ts_and_types() -> None:
    payload = (
        b'{"fleet":"demo","device":"pump-01","state":"online","ts":1700000000.25,'
        b'"site":"plant-a","agent_version":"0.1.0","model_version":4,"buffer_depth":12,'
        b'"cpu_percent":50,"memory_mb":81.5}'
    )
    status = decode_message(DeviceStatus, payload)
    assert [p.to_line() for p in health_points(status, received_at=TS + 100)] == [
        "device_health,device=pump-01,fleet=demo,site=plant-a online=1i,buffer_depth=12i,"
        f'cpu_percent=50.0,memory_mb=81.5,model_version=4i,agent_version="0.1.0" {TS_NS}'
    ]


def test_health_with_unconfirmed_readings() -> None:
    payload = (
        b'{"fleet":"demo","device":"pump-01","state":"online","ts":1700000000.25,'
        b'"buffer_depth":0,"buffer_unconfirmed":7,"confirmed_through_seq":120}'
    )
    status = decode_message(DeviceStatus, payload)
    assert [p.to_line() for p in health_points(status, received_at=TS + 100)] == [
        f"device_health,device=pump-01,fleet=demo online=1i,buffer_depth=0i,"
        f"buffer_unconfirmed=7i {TS_NS}"
    ]


def test_health_offline_is_stamped_with_the_ingest_clock() -> None:
    # A last will carries the ts of the connect; the device went away *now*.
    status = DeviceStatus(fleet="demo", device="pump-01", state="offline", ts=TS - 3600)
    assert [p.to_line() for p in health_points(status, received_at=TS)] == [
        f"device_health,device=pump-01,fleet=demo online=0i {TS_NS}"
    ]


def test_health_without_ts_uses_received_at() -> None:
    status = DeviceStatus(fleet="demo", device="d", state="online")
    (point,) = health_points(status, received_at=TS)
    assert point.time_ns == TS_NS


def test_round_summary_exact_with_rejections_per_reason() -> None:
    summary = RoundSummary(
        fleet="demo",
        round_id=12,
        task="train",
        ts=TS,
        outcome="completed",
        version=13,
        participants=8,
        rejected=3,
        rejected_by_reason={"stale_base": 1, "norm_too_large": 2},
        num_examples=5120,
        train_loss=0.25,
        val_error=17.5,
        val_examples=640,
        bytes_received=1048576,
        duration_s=4.5,
    )
    assert [p.to_line() for p in round_points(summary)] == [
        "fl_round,fleet=demo,outcome=completed,task=train round_id=12i,version=13i,"
        "participants=8i,rejected=3i,num_examples=5120i,val_examples=640i,"
        "bytes_received=1048576i,duration_s=4.5,train_loss=0.25,val_error=17.5,"
        f"rejected_norm_too_large=2i,rejected_stale_base=1i {TS_NS}"
    ]


def test_failed_round_omits_missing_metrics_but_keeps_int_types() -> None:
    summary = RoundSummary(
        fleet="demo",
        round_id=0,
        task="train",
        ts=TS,
        outcome="failed",
        version=0,
        participants=0,
        duration_s=0,
    )
    assert [p.to_line() for p in round_points(summary)] == [
        "fl_round,fleet=demo,outcome=failed,task=train round_id=0i,version=0i,participants=0i,"
        f"rejected=0i,num_examples=0i,val_examples=0i,bytes_received=0i,duration_s=0.0 {TS_NS}"
    ]


def test_escaping_of_measurement_tags_field_keys_and_strings() -> None:
    point = Point.of(
        "my meas,x",
        {"tag key": "a,b=c d", "t": "x\ny"},
        {"f=1,2 3": 'say "hi" \\ path\nnext', "n": -5, "b": True, "x": 1e20},
        123,
    )
    assert point.to_line() == (
        r"my\ meas\,x,t=x\ny,tag\ key=a\,b\=c\ d "
        r'f\=1\,2\ 3="say \"hi\" \\ path\nnext",n=-5i,b=true,x=1e+20 123'
    )
    assert "\n" not in point.to_line()


def test_point_of_sorts_tags_and_drops_empty_values() -> None:
    point = Point.of("m", {"z": "1", "a": "2", "empty": "", "none": None}, {"v": 1.0, "n": None}, 5)
    assert point.tags == (("a", "2"), ("z", "1"))
    assert point.fields == (("v", 1.0),)
    assert point.to_line() == "m,a=2,z=1 v=1.0 5"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "no fields"),
        ({"v": float("nan")}, "non-finite"),
        ({"v": float("inf")}, "non-finite"),
        ({"v": 1 << 63}, "int64"),
        ({"time": 1.0}, "invalid field key"),
        ({"v": b"bytes"}, "unsupported"),
    ],
)
def test_invalid_points_are_refused(fields: dict[str, object], match: str) -> None:
    with pytest.raises(SinkError, match=match):
        Point.of("m", {}, fields, 1)  # type: ignore[arg-type]


def test_seconds_to_ns_rounds_to_microseconds() -> None:
    assert seconds_to_ns(1_700_000_000.1) == 1_700_000_000_100_000_000
    assert seconds_to_ns(1_700_000_000.123456789) == 1_700_000_000_123_457_000
    assert seconds_to_ns(946_684_800.0) == 946_684_800_000_000_000


def test_int_fields_stay_int_across_points_of_a_measurement() -> None:
    """Every field keeps one Python type (hence one line-protocol type) per measurement."""
    statuses = [
        DeviceStatus(fleet="f", device="d", state="online", ts=TS, cpu_percent=1, memory_mb=2),
        DeviceStatus(fleet="f", device="d", state="online", ts=TS, cpu_percent=1.5, buffer_depth=0),
        DeviceStatus(fleet="f", device="d", state="offline"),
    ]
    points = [p for s in statuses for p in health_points(s, received_at=TS)]
    summaries = [
        RoundSummary(
            fleet="f",
            round_id=i,
            task="train",
            ts=TS,
            outcome="completed",
            version=i,
            participants=i,
            train_loss=float(i),
            val_error=i,
            duration_s=i,
        )
        for i in range(3)
    ]
    points += [p for s in summaries for p in round_points(s)]
    types: dict[tuple[str, str], set[type]] = {}
    for point in points:
        for key, value in point.fields:
            types.setdefault((point.measurement, key), set()).add(type(value))
    assert all(len(t) == 1 for t in types.values()), types
    assert types[("device_health", "online")] == {int}
    assert types[("device_health", "cpu_percent")] == {float}
    assert types[("fl_round", "val_error")] == {float}
    assert types[("fl_round", "duration_s")] == {float}
