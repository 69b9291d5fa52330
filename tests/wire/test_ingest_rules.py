"""fedge.ingest_rules on literal bytes: exact payloads → exact points, or exactly one reason.

Expected line protocol is written out by hand from the schema in :mod:`fedge.points`
(tags sorted by key, floats as ``repr``, ints with ``i``, times in ns).
"""

from __future__ import annotations

import pytest

from fedge.errors import FedgeError, IngestReject, IngestRejectedError
from fedge.ingest_rules import Accepted, Ignored, IngestRules
from fedge.points import PointBatch
from fedge.signing import Authenticator, KeyRegistry, SigningKey, sign_message

NOW = 1_750_000_000.0  # the ingest clock: 2025-06-15T15:06:40Z
TELEMETRY = "fedge/v1/demo/devices/pump-01/telemetry"
PREDICTION = "fedge/v1/demo/devices/pump-01/prediction"
STATUS = "fedge/v1/demo/devices/pump-01/status"
SUMMARY = "fedge/v1/demo/rounds/summary"
EVENTS = "fedge/v1/demo/devices/pump-01/events"
EVENT = (
    b'{"fleet":"demo","device":"pump-01","kind":"failure","ts":1749999990.5,'
    b'"note":"seized","event_id":"0123456789ab4def8123456789abcdef","source":"operator"}'
)


def rules(**kwargs: object) -> IngestRules:
    return IngestRules(fleet="demo", known_devices={"pump-01", "pump-02"}, **kwargs)  # type: ignore[arg-type]


def accept(r: IngestRules, topic: str, payload: bytes, *, at: float = NOW) -> Accepted:
    outcome = r.convert(topic, payload, received_at=at)
    assert isinstance(outcome, Accepted), outcome
    return outcome


def as_lines(outcome: Accepted) -> list[str]:
    return [p.to_line() for p in outcome.points]


def reject(r: IngestRules, topic: str, payload: bytes, *, at: float = NOW) -> IngestRejectedError:
    with pytest.raises(IngestRejectedError) as info:
        r.convert(topic, payload, received_at=at)
    return info.value


# Accepted messages: exact points ------------------------------------------------------------
TWO_READINGS = (
    b'{"fleet":"demo","device":"pump-01","site":"plant-a","unit":3,"readings":['
    b'{"seq":7,"ts":1749999990.5,"cycle":42,"values":{"temp":71.5,"vib":0.012}},'
    b'{"seq":8,"ts":1749999991.25,"values":{"temp":71.25,"vib":2}}]}'
)
TWO_LINES = [
    "telemetry,device=pump-01,fleet=demo,site=plant-a,unit=3 "
    "temp=71.5,vib=0.012,seq=7i,cycle=42i 1749999990500000000",
    "telemetry,device=pump-01,fleet=demo,site=plant-a,unit=3 "
    "temp=71.25,vib=2.0,seq=8i 1749999991250000000",
]


def test_telemetry_becomes_one_point_per_reading() -> None:
    outcome = accept(rules(), TELEMETRY, TWO_READINGS)
    assert as_lines(outcome) == TWO_LINES
    assert (outcome.duplicates, outcome.future_readings) == (0, 0)
    assert not isinstance(outcome.points, PointBatch)


def test_telemetry_as_lines_is_the_same_line_protocol_and_the_same_points() -> None:
    outcome = accept(rules(telemetry_as_lines=True), TELEMETRY, TWO_READINGS)
    assert isinstance(outcome.points, PointBatch)
    assert outcome.points.lines == [line.encode() for line in TWO_LINES]
    # The points are made lazily from the payload again: the same as the plain path.
    assert as_lines(outcome) == TWO_LINES


OWING = TWO_READINGS[:-1] + b',"unconfirmed_from_seq":5,"unconfirmed_from_ts":1749999988.5}'


@pytest.mark.parametrize("as_lines_too", [False, True])
def test_tracked_telemetry_carries_what_the_device_says_it_owes(as_lines_too: bool) -> None:
    r = rules(track_readings=True, telemetry_as_lines=as_lines_too)
    outcome = accept(r, TELEMETRY, OWING)
    assert outcome.device == "pump-01"
    assert outcome.readings == ((7, 1749999990.5), (8, 1749999991.25))
    assert outcome.unconfirmed_from == (5, 1749999988.5)
    assert as_lines(outcome) == TWO_LINES  # the field changes no point
    # A redelivery: no points, the same word (a watermark needs it either way).
    again = accept(r, TELEMETRY, OWING)
    assert (list(again.points), again.duplicates) == ([], 2)
    assert again.unconfirmed_from == (5, 1749999988.5)
    # A batch from an agent before the field.
    assert accept(rules(track_readings=True), TELEMETRY, TWO_READINGS).unconfirmed_from is None


def test_a_batch_owing_less_than_itself_is_refused_whole() -> None:
    payload = OWING.replace(b'"unconfirmed_from_seq":5', b'"unconfirmed_from_seq":8')
    err = reject(rules(track_readings=True), TELEMETRY, payload)
    assert err.reason is IngestReject.INVALID_SCHEMA
    assert "unconfirmed_from_seq 8 is above the batch's lowest seq 7" in err.detail


def test_prediction_with_alert_is_a_prediction_and_an_alert_point() -> None:
    payload = (
        b'{"fleet":"demo","device":"pump-01","ts":1749999995,"model_version":3,'
        b'"rul":12.5,"failure_probability":0.8,"horizon":20,"alert":true}'
    )
    assert as_lines(accept(rules(), PREDICTION, payload)) == [
        "prediction,device=pump-01,fleet=demo rul=12.5,failure_probability=0.8,"
        "model_version=3i,horizon=20i,alert=true 1749999995000000000",
        "alert,device=pump-01,fleet=demo,kind=failure_predicted rul=12.5,"
        'failure_probability=0.8,message="pump-01: predicted RUL 12.5 cycles, failure '
        'probability 80% within 20 cycles (model v3)" 1749999995000000000',
    ]


def test_status_online_uses_its_ts_offline_the_ingest_clock() -> None:
    r = rules()
    online = (
        b'{"fleet":"demo","device":"pump-01","state":"online","ts":1749999999,"buffer_depth":4}'
    )
    offline = b'{"fleet":"demo","device":"pump-01","state":"offline","ts":1749990000}'
    assert as_lines(accept(r, STATUS, online)) == [
        "device_health,device=pump-01,fleet=demo online=1i,buffer_depth=4i 1749999999000000000"
    ]
    assert as_lines(accept(r, STATUS, offline)) == [
        "device_health,device=pump-01,fleet=demo online=0i 1750000000000000000"
    ]


def test_cleared_retained_status_is_ignored_not_rejected() -> None:
    outcome = rules().convert(STATUS, b"", received_at=NOW)
    assert isinstance(outcome, Ignored)
    assert STATUS in outcome.detail


def test_round_summary_becomes_one_fl_round_point() -> None:
    payload = (
        b'{"fleet":"demo","round_id":2,"task":"train","ts":1749999998,"outcome":"completed",'
        b'"version":3,"participants":2,"rejected":1,"rejected_by_reason":{"replay":1}}'
    )
    assert as_lines(accept(rules(), SUMMARY, payload)) == [
        "fl_round,fleet=demo,outcome=completed,task=train round_id=2i,version=3i,"
        "participants=2i,rejected=1i,num_examples=0i,val_examples=0i,bytes_received=0i,"
        "duration_s=0.0,rejected_replay=1i 1749999998000000000"
    ]


def test_maintenance_event_becomes_one_event_point_at_its_own_time() -> None:
    assert as_lines(accept(rules(), EVENTS, EVENT)) == [
        'event,device=pump-01,fleet=demo,kind=failure note="seized",'
        'event_id="0123456789ab4def8123456789abcdef",source="operator" 1749999990500000000'
    ]


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        (IngestReject.TOPIC_MISMATCH, (b'"device":"pump-01"', b'"device":"pump-02"')),
        (IngestReject.WRONG_FLEET, (b'"fleet":"demo"', b'"fleet":"other"')),
        (IngestReject.INVALID_SCHEMA, (b'"kind":"failure"', b'"kind":"exploded"')),
        (IngestReject.INVALID_SCHEMA, (b'"0123456789ab4', b'"not-a-uuid4')),
        (IngestReject.FUTURE_TIMESTAMP, (b"1749999990.5", b"1750086401")),
    ],
)
def test_bad_maintenance_events_are_refused(
    reason: IngestReject, change: tuple[bytes, bytes]
) -> None:
    assert change[0] in EVENT
    assert reject(rules(), EVENTS, EVENT.replace(*change)).reason is reason


# Rejected messages: each reason of the rules exactly once ------------------------------------
ONE = b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1749999990,"values":{"t":1}}]}'

CASES = [
    (IngestReject.BAD_TOPIC, "not/a/fedge/topic", ONE),
    (IngestReject.UNEXPECTED_TOPIC, "fedge/v1/demo/rounds/current", b"{}"),
    (IngestReject.TOO_LARGE, TELEMETRY, b"{" + b" " * 126 + b"}"),  # 128 bytes, limit 127
    (IngestReject.MALFORMED_JSON, TELEMETRY, b'{"fleet": "demo", "device": '),
    (IngestReject.INVALID_SCHEMA, TELEMETRY, b'{"fleet":"demo","device":"pump-01"}'),
    (
        IngestReject.WRONG_FLEET,
        TELEMETRY,
        b'{"fleet":"other","device":"pump-01","readings":[{"seq":1,"ts":1749999990,"values":{}}]}',
    ),
    (
        IngestReject.TOPIC_MISMATCH,
        TELEMETRY,
        b'{"fleet":"demo","device":"pump-02","readings":[{"seq":1,"ts":1749999990,"values":{}}]}',
    ),
    (
        IngestReject.UNKNOWN_DEVICE,
        "fedge/v1/demo/devices/pump-09/telemetry",
        b'{"fleet":"demo","device":"pump-09","readings":[{"seq":1,"ts":1749999990,"values":{}}]}',
    ),
    (
        IngestReject.FUTURE_TIMESTAMP,  # every reading more than a day ahead of NOW
        TELEMETRY,
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1750086401,"values":{}}]}',
    ),
]


@pytest.mark.parametrize(("reason", "topic", "payload"), CASES, ids=[c[0].value for c in CASES])
def test_each_reason_of_the_rules(reason: IngestReject, topic: str, payload: bytes) -> None:
    error = reject(rules(max_message_bytes=127), topic, payload)
    assert error.reason is reason
    assert isinstance(error, FedgeError)
    assert str(error).startswith(f"{reason.value}: ")


# Security mode "verify": the signature reasons --------------------------------------------
PUMP_01 = SigningKey.from_seed(bytes(range(32)), signer="pump-01")
PUMP_02 = SigningKey.from_seed(bytes(range(1, 33)), signer="pump-02")
AGGREGATOR = SigningKey.from_seed(bytes(range(100, 132)), signer="aggregator")
REGISTRY = KeyRegistry(
    AGGREGATOR.verify_key, {"pump-01": PUMP_01.verify_key, "pump-02": PUMP_02.verify_key}
)
NONCE = "0123456789abcdef0123456789abcdef"


def verifying(**kwargs: object) -> IngestRules:
    return rules(authenticator=Authenticator("verify", REGISTRY), **kwargs)


def signed(
    payload: bytes,
    *,
    key: SigningKey = PUMP_01,
    topic: str = TELEMETRY,
    ts: float = NOW - 1.0,
    nonce: str = NONCE,
) -> bytes:
    return sign_message(payload, key, topic, now=ts, nonce=nonce)


def _tampered() -> bytes:
    envelope = signed(ONE)
    return envelope.replace(b'\\"t\\":1', b'\\"t\\":9')


SIGNED_CASES = [
    (IngestReject.UNSIGNED, ONE),
    (IngestReject.BAD_SIGNATURE, _tampered()),
    (IngestReject.WRONG_SIGNER, signed(ONE, key=PUMP_02)),
    (IngestReject.STALE, signed(ONE, ts=NOW - 301.0)),  # the guard's window is 300 s
    (IngestReject.CLOCK_SKEW, signed(ONE, ts=NOW + 31.0)),  # 30 s of skew allowed
]


@pytest.mark.parametrize(
    ("reason", "payload"), SIGNED_CASES, ids=[c[0].value for c in SIGNED_CASES]
)
def test_each_signature_reason(reason: IngestReject, payload: bytes) -> None:
    assert reject(verifying(), TELEMETRY, payload).reason is reason


def test_signed_telemetry_is_accepted_once_then_a_replay() -> None:
    r = verifying()
    envelope = signed(TWO_READINGS)
    assert as_lines(accept(r, TELEMETRY, envelope)) == TWO_LINES
    assert reject(r, TELEMETRY, envelope).reason is IngestReject.REPLAY
    # The same readings under a fresh nonce are redeliveries: duplicates, not points.
    again = accept(r, TELEMETRY, signed(TWO_READINGS, nonce="f" * 32))
    assert (list(again.points), again.duplicates) == ([], 2)


def test_verify_mode_checks_every_ingested_topic() -> None:
    r = verifying()
    prediction = (
        b'{"fleet":"demo","device":"pump-01","ts":1749999995,"model_version":3,'
        b'"rul":12.5,"failure_probability":0.1,"horizon":20}'
    )
    summary = (
        b'{"fleet":"demo","round_id":2,"task":"train","ts":1749999998,"outcome":"completed",'
        b'"version":3,"participants":2}'
    )
    assert reject(r, PREDICTION, prediction).reason is IngestReject.UNSIGNED
    assert len(accept(r, PREDICTION, signed(prediction, topic=PREDICTION)).points) == 1
    # A summary is the aggregator's: a device's key does not do.
    assert reject(r, SUMMARY, signed(summary, topic=SUMMARY)).reason is IngestReject.WRONG_SIGNER
    assert len(accept(r, SUMMARY, signed(summary, key=AGGREGATOR, topic=SUMMARY)).points) == 1
    # A device without a registered key is unknown, however well it signs.
    ghost = SigningKey.from_seed(bytes(range(5, 37)), signer="pump-02")
    topic = "fedge/v1/demo/devices/pump-02/telemetry"
    forged = signed(ONE.replace(b"pump-01", b"pump-02"), key=ghost, topic=topic)
    assert reject(r, topic, forged).reason is IngestReject.BAD_SIGNATURE


def test_signed_statuses_keep_the_newest_and_fresh_online_only() -> None:
    r = verifying()
    online = b'{"fleet":"demo","device":"pump-01","state":"online","ts":1749999990}'
    offline = b'{"fleet":"demo","device":"pump-01","state":"offline"}'
    newer = signed(online, topic=STATUS, ts=NOW - 5.0, nonce="1" * 32)
    older = signed(online, topic=STATUS, ts=NOW - 10.0, nonce="2" * 32)
    assert accept(r, STATUS, newer).points
    assert reject(r, STATUS, older).reason is IngestReject.STALE  # a replayed older online
    # The last will is signed when the agent connects: old when published, still taken.
    will = signed(offline, topic=STATUS, ts=NOW - 3600.0, nonce="3" * 32)
    assert accept(r, STATUS, will).points
    stale = signed(online, topic=STATUS, ts=NOW - 301.0, nonce="4" * 32)
    assert reject(verifying(), STATUS, stale).reason is IngestReject.STALE
    # The same retained status delivered again (a resubscribe) is not refused.
    assert accept(r, STATUS, newer).points


def test_off_mode_unwraps_signed_messages_unchecked() -> None:
    assert as_lines(accept(rules(), TELEMETRY, signed(TWO_READINGS, key=PUMP_02))) == TWO_LINES


def test_the_cases_cover_every_reason_the_rules_can_give() -> None:
    service_only = {IngestReject.QUEUE_FULL, IngestReject.SINK_REFUSED, IngestReject.INTERNAL}
    signature = [c[0] for c in SIGNED_CASES] + [IngestReject.REPLAY]  # REPLAY: test above
    covered = [c[0] for c in CASES] + signature
    assert sorted(covered) == sorted(r for r in IngestReject if r not in service_only)


def test_wrong_fleet_in_the_topic_is_refused_before_the_payload_is_read() -> None:
    error = reject(rules(), "fedge/v1/other/devices/pump-01/telemetry", b"not json")
    assert error.reason is IngestReject.WRONG_FLEET


@pytest.mark.parametrize(
    "payload",
    [
        # 1970: outside the 2000..2100 bound of the wire model
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1.0,"values":{}}]}',
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":-1,"ts":1749999990,"values":{}}]}',
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1749999990,"values":{"t":NaN}}]}',
        # decodes, but "seq" is a reserved sensor name: cannot become points
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1749999990,"values":{"seq":1}}]}',
        b"[1, 2, 3]",
    ],
)
def test_invalid_schema(payload: bytes) -> None:
    assert reject(rules(), TELEMETRY, payload).reason is IngestReject.INVALID_SCHEMA


def test_future_prediction_status_and_summary_are_refused() -> None:
    r = rules()
    ahead = b"1750086401"  # NOW + 86_401 s
    for topic, payload in [
        (
            PREDICTION,
            b'{"fleet":"demo","device":"pump-01","ts":' + ahead + b',"model_version":1,'
            b'"rul":1,"failure_probability":0,"horizon":1}',
        ),
        (STATUS, b'{"fleet":"demo","device":"pump-01","state":"online","ts":' + ahead + b"}"),
        (
            SUMMARY,
            b'{"fleet":"demo","round_id":1,"task":"train","ts":' + ahead + b","
            b'"outcome":"completed","version":1,"participants":1}',
        ),
    ]:
        assert reject(r, topic, payload).reason is IngestReject.FUTURE_TIMESTAMP


# Timestamps from the future: dropped one by one ---------------------------------------------
FUTURE_MIDDLE = (
    b'{"fleet":"demo","device":"pump-01","readings":['
    b'{"seq":1,"ts":1749999999,"values":{"t":1}},'
    b'{"seq":2,"ts":1750172800,"values":{"t":2}},'  # two days ahead: a broken clock
    b'{"seq":3,"ts":1750000060,"values":{"t":3}}]}'  # a minute ahead: tolerated skew
)


@pytest.mark.parametrize("as_lines_", [False, True])
def test_future_readings_are_dropped_from_a_partly_valid_batch(as_lines_: bool) -> None:
    outcome = accept(rules(telemetry_as_lines=as_lines_), TELEMETRY, FUTURE_MIDDLE)
    assert as_lines(outcome) == [
        "telemetry,device=pump-01,fleet=demo t=1.0,seq=1i 1749999999000000000",
        "telemetry,device=pump-01,fleet=demo t=3.0,seq=3i 1750000060000000000",
    ]
    assert (outcome.duplicates, outcome.future_readings) == (0, 1)


def test_the_limit_is_inclusive_and_follows_received_at() -> None:
    r = rules(max_future_s=60.0)
    at_limit = (
        b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1750000060,"values":{}}]}'
    )
    assert len(accept(r, TELEMETRY, at_limit).points) == 1
    # The same reading, received a second earlier, is one second too far ahead.
    assert reject(rules(max_future_s=60.0), TELEMETRY, at_limit, at=NOW - 1).reason is (
        IngestReject.FUTURE_TIMESTAMP
    )


# De-duplication -------------------------------------------------------------------------------
SEQ_1_2 = (
    b'{"fleet":"demo","device":"pump-01","readings":['
    b'{"seq":1,"ts":1749999000,"values":{"t":1}},{"seq":2,"ts":1749999001,"values":{"t":2}}]}'
)


@pytest.mark.parametrize("as_lines_", [False, True])
def test_redelivery_is_a_duplicate(as_lines_: bool) -> None:
    r = rules(telemetry_as_lines=as_lines_)
    assert len(accept(r, TELEMETRY, SEQ_1_2).points) == 2
    again = accept(r, TELEMETRY, SEQ_1_2)  # QoS 1 redelivery: the very same bytes
    assert (list(again.points), again.duplicates) == ([], 2)
    # Same seqs from another device are not duplicates.
    other = SEQ_1_2.replace(b"pump-01", b"pump-02")
    assert accept(r, "fedge/v1/demo/devices/pump-02/telemetry", other).duplicates == 0


@pytest.mark.parametrize("as_lines_", [False, True])
def test_same_seq_with_another_timestamp_is_a_restarted_counter(as_lines_: bool) -> None:
    r = rules(telemetry_as_lines=as_lines_)
    accept(r, TELEMETRY, SEQ_1_2)
    restarted = SEQ_1_2.replace(b"17499990", b"17499999")  # same seqs, ts 900 s later
    outcome = accept(r, TELEMETRY, restarted)
    assert outcome.duplicates == 0
    assert [p.time_ns for p in outcome.points] == [1749999900_000_000_000, 1749999901_000_000_000]
    # ... and its timestamps are now the ones a redelivery must match.
    assert accept(r, TELEMETRY, restarted).duplicates == 2
    assert accept(r, TELEMETRY, SEQ_1_2).duplicates == 0


@pytest.mark.parametrize("as_lines_", [False, True])
def test_duplicate_and_future_readings_in_one_batch(as_lines_: bool) -> None:
    r = rules(telemetry_as_lines=as_lines_)
    first = (
        b'{"fleet":"demo","device":"pump-01","readings":['
        b'{"seq":1,"ts":1749999999,"values":{"t":1}}]}'
    )
    accept(r, TELEMETRY, first)
    outcome = accept(r, TELEMETRY, FUTURE_MIDDLE)  # seq 1 again, seq 2 ahead, seq 3 new
    assert (outcome.duplicates, outcome.future_readings) == (1, 1)
    expected = ["telemetry,device=pump-01,fleet=demo t=3.0,seq=3i 1750000060000000000"]
    if isinstance(outcome.points, PointBatch):
        assert outcome.points.lines == [expected[0].encode()]
    assert as_lines(outcome) == expected


def test_a_refused_batch_does_not_mark_its_seqs_as_seen() -> None:
    r = rules()
    reserved = (
        b'{"fleet":"demo","device":"pump-01","readings":['
        b'{"seq":1,"ts":1749999000,"values":{"t":1}},{"seq":2,"ts":1749999001,"values":{"seq":2}}]}'
    )
    assert reject(r, TELEMETRY, reserved).reason is IngestReject.INVALID_SCHEMA
    assert accept(r, TELEMETRY, SEQ_1_2).duplicates == 0
    assert r.dedup.remembered("pump-01") == 2


def test_deduplicator_memory_is_bounded_per_device_and_in_devices() -> None:
    first = b'{"fleet":"demo","device":"a","readings":[{"seq":0,"ts":1749999000,"values":{}}]}'
    r = IngestRules(fleet="demo", dedup_window=2, max_tracked_devices=2)
    dedup = r.dedup
    for seq in range(3):
        payload = first.replace(b'"seq":0', b'"seq":%d' % seq)
        accept(r, "fedge/v1/demo/devices/a/telemetry", payload)
    assert dedup.remembered("a") == 2  # seq 0 evicted
    assert accept(r, "fedge/v1/demo/devices/a/telemetry", first).duplicates == 0
    for device in (b"b", b"c"):
        payload = first.replace(b'"a"', b'"' + device + b'"')
        accept(r, f"fedge/v1/demo/devices/{device.decode()}/telemetry", payload)
    assert dedup.devices == ["b", "c"]  # "a" was the least recently seen
    assert dedup.remembered("a") == 0
