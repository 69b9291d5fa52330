"""JSON messages of wire protocol v1: exact bytes and every rejection."""

from __future__ import annotations

import json

import pytest

from fedge.compression import UpdateCodec, resolve_codec, wire_codec
from fedge.errors import MessageError, ProtocolError
from fedge.messages import (
    MAX_MESSAGE_BYTES,
    DeviceStatus,
    Prediction,
    Reading,
    RoundAnnouncement,
    RoundSummary,
    TelemetryBatch,
    TrainingConfig,
    decode_message,
    encode_message,
)
from fedge.spec import ModelSpec

ANNOUNCEMENT = RoundAnnouncement(
    fleet="plant-7",
    round_id=12,
    base_version=3,
    issued_at=1_700_000_000.0,
    deadline=1_700_000_060.5,
    min_clients=2,
)
ANNOUNCEMENT_JSON = (
    b'{"fleet":"plant-7","round_id":12,"task":"train","base_version":3,'
    b'"issued_at":1700000000.0,"deadline":1700000060.5,"min_clients":2,'
    b'"training":{"epochs":1,"batch_size":64,"learning_rate":0.001,"proximal_mu":0.0},'
    b'"codec":"safetensors","max_update_bytes":16777216}'
)

BATCH = TelemetryBatch(
    fleet="plant-7",
    device="pump-03",
    readings=[
        Reading(seq=1, ts=1_700_000_000.25, cycle=4, values={"t24": 642.5, "p30": 1589.75}),
        Reading(seq=2, ts=1_700_000_001.0, values={"t24": 643.0}),
    ],
)
BATCH_JSON = (
    b'{"fleet":"plant-7","device":"pump-03","readings":['
    b'{"seq":1,"ts":1700000000.25,"cycle":4,"values":{"t24":642.5,"p30":1589.75}},'
    b'{"seq":2,"ts":1700000001.0,"values":{"t24":643.0}}]}'
)


def test_round_announcement_exact_bytes() -> None:
    assert encode_message(ANNOUNCEMENT) == ANNOUNCEMENT_JSON


def test_stats_announcement_carries_the_model_spec() -> None:
    spec = ModelSpec(n_features=14, context="history", dropout=0.1, offset_noise=0.6)
    ann = ANNOUNCEMENT.model_copy(update={"task": "stats", "model": spec})
    encoded = encode_message(ann)
    assert encoded == ANNOUNCEMENT_JSON.replace(b'"task":"train"', b'"task":"stats"')[:-1] + (
        b',"model":{"name":"cnn","n_features":14,"window":30,"hidden":32,"rul_cap":125.0,'
        b'"horizon":30,"context":"history","baseline_cycles":20,"filters":8,"dropout":0.1,'
        b'"offset_noise":0.6}}'
    )
    assert decode_message(RoundAnnouncement, encoded) == ann
    bad = encoded.replace(b'"context":"history"', b'"context":"lifetime"')
    with pytest.raises(MessageError, match="context"):
        decode_message(RoundAnnouncement, bad)


def test_announcement_with_an_update_codec_exact_bytes() -> None:
    codec = UpdateCodec(dtype="int4", delta=True, error_feedback=True, top_k=0.1, zstd_level=3)
    ann = ANNOUNCEMENT.model_copy(update={"codec": codec})
    encoded = encode_message(ann)
    assert encoded == ANNOUNCEMENT_JSON.replace(
        b'"codec":"safetensors"',
        b'"codec":{"dtype":"int4","granularity":"tensor","delta":true,"error_feedback":true,'
        b'"top_k":0.1,"stochastic_rounding":false,"zstd_level":3}',
    )
    decoded = decode_message(RoundAnnouncement, encoded)
    assert decoded == ann
    assert resolve_codec(decoded.codec) == codec


def test_v1_announcement_codec_string_still_parses_as_float32() -> None:
    decoded = decode_message(RoundAnnouncement, ANNOUNCEMENT_JSON)
    assert decoded.codec == "safetensors"
    assert resolve_codec(decoded.codec) == UpdateCodec()
    assert resolve_codec(decoded.codec).dtype == "float32"
    # And the default codec goes out as the v1 string, so old agents still parse it.
    assert encode_message(ANNOUNCEMENT.model_copy(update={"codec": wire_codec(UpdateCodec())}))\
        == ANNOUNCEMENT_JSON


def test_telemetry_batch_exact_bytes_omit_none_fields() -> None:
    encoded = encode_message(BATCH)
    assert encoded == BATCH_JSON
    assert b"site" not in encoded
    assert b"unit" not in encoded
    assert b"null" not in encoded


def test_telemetry_batch_says_what_the_device_still_owes_exact_bytes() -> None:
    owing = BATCH.model_copy(
        update={"unconfirmed_from_seq": 0, "unconfirmed_from_ts": 1_699_999_999.5}
    )
    encoded = encode_message(owing)
    assert encoded == BATCH_JSON[:-1] + (
        b',"unconfirmed_from_seq":0,"unconfirmed_from_ts":1699999999.5}'
    )
    assert decode_message(TelemetryBatch, encoded) == owing
    # A batch from before the field (BATCH_JSON) still parses, without it.
    old = decode_message(TelemetryBatch, BATCH_JSON)
    assert (old.unconfirmed_from_seq, old.unconfirmed_from_ts) == (None, None)


@pytest.mark.parametrize(
    ("owed", "match"),
    [
        # The batch's seqs are 1 and 2: they are among the readings owed.
        ({"unconfirmed_from_seq": 2, "unconfirmed_from_ts": 1_700_000_000.0},
         "unconfirmed_from_seq 2 is above the batch's lowest seq 1"),
        ({"unconfirmed_from_seq": 1}, "go together"),
        ({"unconfirmed_from_ts": 1_700_000_000.0}, "go together"),
        ({"unconfirmed_from_seq": -1, "unconfirmed_from_ts": 1_700_000_000.0},
         "unconfirmed_from_seq: Input should be greater than or equal to 0"),
        ({"unconfirmed_from_seq": 0, "unconfirmed_from_ts": 1.0},
         "unconfirmed_from_ts: Input should be greater than or equal to 946684800"),
    ],
)
def test_what_a_batch_says_it_owes_is_checked(owed: dict[str, object], match: str) -> None:
    data = json.loads(BATCH_JSON)
    data.update(owed)
    payload = json.dumps(data).encode()
    with pytest.raises(MessageError, match=match):
        decode_message(TelemetryBatch, payload)


@pytest.mark.parametrize(
    ("model", "message", "payload"),
    [(RoundAnnouncement, ANNOUNCEMENT, ANNOUNCEMENT_JSON), (TelemetryBatch, BATCH, BATCH_JSON)],
)
def test_decode_round_trip(model: type, message: object, payload: bytes) -> None:
    assert decode_message(model, payload) == message


def test_other_messages_round_trip() -> None:
    messages = [
        DeviceStatus(fleet="f", device="d", state="offline", ts=1_700_000_000.0, buffer_depth=0),
        Prediction(fleet="f", device="d", ts=1_700_000_000.0, model_version=2, rul=17.5,
                   failure_probability=0.25, horizon=30, alert=True, unit=3),
        Prediction(fleet="f", device="d", ts=1_700_000_000.0, model_version=2, rul=17.5,
                   failure_probability=0.25, horizon=30, health=0.5, anomaly=True,
                   anomaly_reason="oil_pressure z=-4.2"),
        RoundSummary(fleet="f", round_id=4, task="evaluate", ts=1_700_000_000.0,
                     outcome="failed", version=2, participants=1,
                     rejected_by_reason={"replay": 2}, val_error=3.5),
    ]
    for message in messages:
        assert decode_message(type(message), encode_message(message)) == message


def test_prediction_health_fields_exact_bytes_and_bounds() -> None:
    pred = Prediction(fleet="f", device="d", ts=1_700_000_000.0, model_version=2, rul=17.5,
                      failure_probability=0.25, horizon=30, health=0.5, anomaly=True,
                      anomaly_reason="oil_pressure z=-4.2")
    assert encode_message(pred) == (
        b'{"fleet":"f","device":"d","ts":1700000000.0,"model_version":2,"rul":17.5,'
        b'"failure_probability":0.25,"horizon":30,"alert":false,"health":0.5,'
        b'"anomaly":true,"anomaly_reason":"oil_pressure z=-4.2"}'
    )
    for bad in (1.5, -0.1):
        with pytest.raises(MessageError, match="health"):
            decode_message(Prediction, encode_message(pred).replace(b"0.5", str(bad).encode()))


def test_messages_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        ANNOUNCEMENT.round_id = 13  # type: ignore[misc]


# Rejections --------------------------------------------------------------------------------


def test_oversize_payload_is_refused_before_parsing() -> None:
    # Not JSON at all: only the size check can produce this message.
    with pytest.raises(MessageError,
                       match=r"TelemetryBatch message of 2049 bytes exceeds limit 2048"):
        decode_message(TelemetryBatch, b"\xff" * 2049, max_bytes=2048)


def test_default_message_limit() -> None:
    assert MAX_MESSAGE_BYTES == 1 << 20
    with pytest.raises(MessageError, match="exceeds limit 1048576"):
        decode_message(DeviceStatus, b" " * (MAX_MESSAGE_BYTES + 1))


def test_payload_at_the_limit_is_parsed() -> None:
    assert decode_message(RoundAnnouncement, ANNOUNCEMENT_JSON,
                          max_bytes=len(ANNOUNCEMENT_JSON)) == ANNOUNCEMENT


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"not json", b"\xff\xfe{}", b"[1,2]", b"null", b'"text"'],
    ids=["empty", "unterminated", "text", "bad-utf8", "array", "null", "string"],
)
def test_invalid_json(payload: bytes) -> None:
    with pytest.raises(MessageError, match="invalid TelemetryBatch"):
        decode_message(TelemetryBatch, payload)


def _announcement(**changes: object) -> bytes:
    data = json.loads(ANNOUNCEMENT_JSON)
    data.update(changes)
    return json.dumps(data).encode()


def _batch(**reading_changes: object) -> bytes:
    data = json.loads(BATCH_JSON)
    data["readings"][0].update(reading_changes)
    return json.dumps(data).encode()


def test_extra_field() -> None:
    with pytest.raises(MessageError, match="invalid RoundAnnouncement: surprise: Extra inputs"):
        decode_message(RoundAnnouncement, _announcement(surprise=True))


def test_extra_field_nested() -> None:
    data = json.loads(ANNOUNCEMENT_JSON)
    data["training"]["optimizer"] = "sgd"
    with pytest.raises(MessageError, match=r"training\.optimizer"):
        decode_message(RoundAnnouncement, json.dumps(data).encode())


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_in_readings(literal: bytes) -> None:
    payload = BATCH_JSON.replace(b"642.5", literal)
    assert literal in payload
    with pytest.raises(MessageError, match=r"readings\.0\.values\.t24: Input should be a finite"):
        decode_message(TelemetryBatch, payload)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity"])
def test_nan_and_infinity_literals_in_timestamps(literal: bytes) -> None:
    payload = ANNOUNCEMENT_JSON.replace(b"1700000060.5", literal)
    with pytest.raises(MessageError, match="deadline"):
        decode_message(RoundAnnouncement, payload)


def test_nan_is_refused_when_building_too() -> None:
    with pytest.raises(ValueError, match="finite"):
        Reading(seq=1, ts=1_700_000_000.0, values={"t": float("nan")})


@pytest.mark.parametrize(
    "ts",
    [0, 946_684_799.0, 4_102_444_800.5, 1e12, -1],
    ids=["epoch", "1999-12-31", "after-2100", "milliseconds", "negative"],
)
def test_timestamps_outside_2000_to_2100(ts: float) -> None:
    with pytest.raises(MessageError, match=r"readings\.0\.ts: Input should be"):
        decode_message(TelemetryBatch, _batch(ts=ts))


@pytest.mark.parametrize("ts", [946_684_800.0, 4_102_444_800.0])
def test_timestamp_bounds_are_inclusive(ts: float) -> None:
    assert decode_message(TelemetryBatch, _batch(ts=ts)).readings[0].ts == ts


@pytest.mark.parametrize(
    "device",
    ["", "pump 03", "a/b", "+", "#", "a" * 65, "pümpe", "-x", "pump\n"],
)
def test_bad_identifiers(device: str) -> None:
    data = json.loads(BATCH_JSON)
    data["device"] = device
    with pytest.raises(MessageError, match="invalid TelemetryBatch: device: String should match"):
        decode_message(TelemetryBatch, json.dumps(data).encode())


@pytest.mark.parametrize("sensor", ["1abc", "t-24", "a b", "", "x" * 65])
def test_bad_sensor_names(sensor: str) -> None:
    data = json.loads(BATCH_JSON)
    data["readings"][0]["values"] = {sensor: 1.0}
    with pytest.raises(MessageError, match=r"readings\.0\.values"):
        decode_message(TelemetryBatch, json.dumps(data).encode())


def test_empty_readings_list() -> None:
    data = json.loads(BATCH_JSON)
    data["readings"] = []
    with pytest.raises(MessageError, match="readings: List should have at least 1 item"):
        decode_message(TelemetryBatch, json.dumps(data).encode())


def test_negative_sequence_number() -> None:
    with pytest.raises(MessageError, match=r"readings\.0\.seq"):
        decode_message(TelemetryBatch, _batch(seq=-1))


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"round_id": -1}, "round_id"),
        ({"task": "mine-bitcoin"}, "task"),
        ({"codec": "pickle"}, r"codec\.safetensors"),
        ({"codec": {"dtype": "int3"}}, r"codec\.UpdateCodec\.dtype"),
        ({"codec": {"top_k": 0.1}}, r"codec\.UpdateCodec"),
        ({"codec": {"zstd_level": 99}}, r"codec\.UpdateCodec\.zstd_level"),
        ({"codec": 3}, r"codec\.UpdateCodec"),
        ({"min_clients": 0}, "min_clients"),
        ({"max_update_bytes": 1023}, "max_update_bytes"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate"),
    ],
)
def test_announcement_field_bounds(changes: dict[str, object], where: str) -> None:
    with pytest.raises(MessageError, match=f"invalid RoundAnnouncement: {where}:"):
        decode_message(RoundAnnouncement, _announcement(**changes))


def test_error_message_is_one_line_and_counts_errors() -> None:
    with pytest.raises(MessageError) as info:
        decode_message(TelemetryBatch, b"{}")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("invalid TelemetryBatch: fleet: Field required")
    assert text.endswith("(3 error(s))")
    assert isinstance(info.value, ProtocolError)


def test_message_error_does_not_leak_a_pydantic_type() -> None:
    with pytest.raises(MessageError) as info:
        decode_message(DeviceStatus, b'{"fleet":"f","device":"d","state":"dead"}')
    assert "state" in str(info.value)
    assert type(info.value) is MessageError


def test_default_training_config() -> None:
    assert TrainingConfig() == TrainingConfig(
        epochs=1, batch_size=64, learning_rate=1e-3, proximal_mu=0.0
    )
