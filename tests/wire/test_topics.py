"""Topics of wire protocol v1: exact strings, parsing, and every invalid form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.errors import ProtocolError, TopicError
from fedge.topics import (
    PROTOCOL_ROOT,
    ParsedTopic,
    TopicKind,
    Topics,
    parse_topic,
    validate_segment,
)

T = Topics("plant-7")


def test_exact_topic_strings() -> None:
    assert PROTOCOL_ROOT == "fedge/v1"
    assert T.root == "fedge/v1/plant-7"
    assert T.telemetry("pump-03") == "fedge/v1/plant-7/devices/pump-03/telemetry"
    assert T.status("pump-03") == "fedge/v1/plant-7/devices/pump-03/status"
    assert T.prediction("pump-03") == "fedge/v1/plant-7/devices/pump-03/prediction"
    assert T.events("pump-03") == "fedge/v1/plant-7/devices/pump-03/events"
    assert T.round_current == "fedge/v1/plant-7/rounds/current"
    assert T.update(12, "pump-03") == "fedge/v1/plant-7/rounds/12/updates/pump-03"
    assert T.update(0, "pump-03") == "fedge/v1/plant-7/rounds/0/updates/pump-03"
    assert T.update_chunks(12, "pump-03") == "fedge/v1/plant-7/rounds/12/updates/pump-03/chunks"
    assert T.round_summary == "fedge/v1/plant-7/rounds/summary"
    assert T.global_model == "fedge/v1/plant-7/model/global"


def test_exact_subscription_filters() -> None:
    assert T.all_telemetry == "fedge/v1/plant-7/devices/+/telemetry"
    assert T.all_status == "fedge/v1/plant-7/devices/+/status"
    assert T.all_predictions == "fedge/v1/plant-7/devices/+/prediction"
    assert T.all_events == "fedge/v1/plant-7/devices/+/events"
    assert T.all_updates == "fedge/v1/plant-7/rounds/+/updates/+"
    assert T.all_update_chunks == "fedge/v1/plant-7/rounds/+/updates/+/chunks"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (T.telemetry("pump-03"), ParsedTopic(TopicKind.TELEMETRY, "plant-7", "pump-03")),
        (T.status("pump-03"), ParsedTopic(TopicKind.STATUS, "plant-7", "pump-03")),
        (T.prediction("pump-03"), ParsedTopic(TopicKind.PREDICTION, "plant-7", "pump-03")),
        (T.events("pump-03"), ParsedTopic(TopicKind.EVENTS, "plant-7", "pump-03")),
        (T.round_current, ParsedTopic(TopicKind.ROUND_CURRENT, "plant-7")),
        (T.update(12, "pump-03"), ParsedTopic(TopicKind.UPDATE, "plant-7", "pump-03", 12)),
        (
            T.update_chunks(12, "pump-03"),
            ParsedTopic(TopicKind.UPDATE_CHUNK, "plant-7", "pump-03", 12),
        ),
        (T.round_summary, ParsedTopic(TopicKind.ROUND_SUMMARY, "plant-7")),
        (T.global_model, ParsedTopic(TopicKind.GLOBAL_MODEL, "plant-7")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_parse_round_trip(topic: str, expected: ParsedTopic) -> None:
    assert parse_topic(topic) == expected


def test_parse_covers_every_kind() -> None:
    built = [
        T.telemetry("d"), T.status("d"), T.prediction("d"), T.events("d"), T.round_current,
        T.update(1, "d"), T.update_chunks(1, "d"), T.round_summary, T.global_model,
    ]
    assert {parse_topic(t).kind for t in built} == set(TopicKind)


def test_summary_is_not_mistaken_for_a_round_id() -> None:
    parsed = parse_topic("fedge/v1/plant-7/rounds/summary")
    assert parsed.kind is TopicKind.ROUND_SUMMARY
    assert parsed.round_id is None


BAD_SEGMENTS = [
    "",
    "+",
    "#",
    "a/b",
    "pump 03",
    " pump",
    "a" * 65,
    "pümpe",
    "泵",
    "-pump",
    "_pump",
    ".hidden",
    "pump\n",
    "pump\x00",
    "$SYS",
]


@pytest.mark.parametrize("bad", BAD_SEGMENTS)
def test_invalid_device_segment_is_refused_when_building(bad: str) -> None:
    for build in (
        T.telemetry, T.status, T.prediction, T.events, lambda d: T.update(1, d),
        lambda d: T.update_chunks(1, d),
    ):
        with pytest.raises(TopicError, match="invalid device"):
            build(bad)


@pytest.mark.parametrize("bad", BAD_SEGMENTS)
def test_invalid_fleet_segment_is_refused(bad: str) -> None:
    with pytest.raises(TopicError, match="invalid fleet"):
        Topics(bad)


@pytest.mark.parametrize(
    "bad",
    [b for b in BAD_SEGMENTS if "/" not in b and b != ""],
)
def test_invalid_segments_are_refused_when_parsing(bad: str) -> None:
    with pytest.raises(TopicError, match="invalid device"):
        parse_topic(f"fedge/v1/plant-7/devices/{bad}/telemetry")
    with pytest.raises(TopicError, match="invalid device"):
        parse_topic(f"fedge/v1/plant-7/rounds/3/updates/{bad}")
    with pytest.raises(TopicError, match="invalid device"):
        parse_topic(f"fedge/v1/plant-7/rounds/3/updates/{bad}/chunks")
    with pytest.raises(TopicError, match="invalid fleet"):
        parse_topic(f"fedge/v1/{bad}/rounds/current")


def test_empty_segment_when_parsing() -> None:
    with pytest.raises(TopicError, match="invalid device"):
        parse_topic("fedge/v1/plant-7/devices//telemetry")
    with pytest.raises(TopicError, match="invalid fleet"):
        parse_topic("fedge/v1//rounds/current")


def test_segment_length_limits() -> None:
    assert validate_segment("a" * 64, what="device") == "a" * 64
    assert validate_segment("A", what="device") == "A"
    assert validate_segment("0.9_x-Y", what="device") == "0.9_x-Y"
    with pytest.raises(TopicError, match="1-64 characters"):
        validate_segment("a" * 65, what="device")


def test_validate_segment_refuses_non_strings() -> None:
    with pytest.raises(TopicError):
        validate_segment(7, what="device")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fedge",
        "fedge/v1",
        "fedge/v1/plant-7",
        "homeassistant/sensor/pump/state",
        "$SYS/broker/uptime",
        "/fedge/v1/plant-7/rounds/current",
        "fedge/v1/plant-7/rounds/current/",
        "fedge/v1/plant-7/devices/pump-03",
        "fedge/v1/plant-7/devices/pump-03/telemetry/extra",
        "fedge/v1/plant-7/devices/pump-03/logs",
        "fedge/v1/plant-7/model/local",
        "fedge/v1/plant-7/rounds/12/updates",
        "fedge/v1/plant-7/rounds/12/update/pump-03",
        "fedge/v1/plant-7/rounds/+/updates/+",
        "fedge/v1/plant-7/rounds/12/updates/pump-03/chunk",
        "fedge/v1/plant-7/rounds/12/updates/pump-03/chunks/0",
        "fedge/v1/plant-7/rounds/+/updates/+/chunks",
        "fedge/v1/plant-7/devices/+/status",
        "fedge/v1/plant-7/#",
    ],
)
def test_non_fedge_or_unknown_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "fedge/v2/plant-7/rounds/current",
        "fedge/v0/plant-7/rounds/current",
        "fedge/V1/plant-7/rounds/current",
        "Fedge/v1/plant-7/rounds/current",
        "fedge/v1.0/plant-7/rounds/current",
    ],
)
def test_wrong_version_root(topic: str) -> None:
    with pytest.raises(TopicError, match="not a fedge/v1 topic"):
        parse_topic(topic)


@pytest.mark.parametrize(
    "round_text",
    ["-1", "01", "00", "1e3", "١", "²", "12٣", "+1", " 1", "1 ", "0x10", "1.0", "", "1" * 19],
)
def test_malformed_round_ids(round_text: str) -> None:
    with pytest.raises(TopicError, match="invalid round id"):
        parse_topic(f"fedge/v1/plant-7/rounds/{round_text}/updates/pump-03")


def test_large_round_id_parses() -> None:
    big = 10**18 - 1
    assert parse_topic(f"fedge/v1/plant-7/rounds/{big}/updates/d").round_id == big


@pytest.mark.parametrize("bad", [-1, True, 1.0, "3", None])
def test_update_refuses_bad_round_ids(bad: object) -> None:
    with pytest.raises(TopicError, match="round id must be a non-negative integer"):
        T.update(bad, "pump-03")  # type: ignore[arg-type]


def test_topic_error_is_a_protocol_error() -> None:
    assert issubclass(TopicError, ProtocolError)


IDENT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


@given(fleet=IDENT, device=IDENT, round_id=st.integers(0, 10**18 - 1))
def test_hypothesis_round_trip(fleet: str, device: str, round_id: int) -> None:
    topics = Topics(fleet)
    assert parse_topic(topics.telemetry(device)) == ParsedTopic(TopicKind.TELEMETRY, fleet, device)
    assert parse_topic(topics.status(device)) == ParsedTopic(TopicKind.STATUS, fleet, device)
    assert parse_topic(topics.prediction(device)) == ParsedTopic(
        TopicKind.PREDICTION, fleet, device
    )
    assert parse_topic(topics.update(round_id, device)) == ParsedTopic(
        TopicKind.UPDATE, fleet, device, round_id
    )
    assert parse_topic(topics.update_chunks(round_id, device)) == ParsedTopic(
        TopicKind.UPDATE_CHUNK, fleet, device, round_id
    )
    assert parse_topic(topics.round_current) == ParsedTopic(TopicKind.ROUND_CURRENT, fleet)
    assert parse_topic(topics.global_model) == ParsedTopic(TopicKind.GLOBAL_MODEL, fleet)
    assert parse_topic(topics.round_summary) == ParsedTopic(TopicKind.ROUND_SUMMARY, fleet)


@given(st.text(max_size=80))
def test_hypothesis_segment_validation_matches_the_rule(text: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    ok = (
        1 <= len(text) <= 64
        and all(c in allowed for c in text)
        and text[0] not in "_.-"
    )
    if ok:
        assert validate_segment(text, what="device") == text
    else:
        with pytest.raises(TopicError):
            validate_segment(text, what="device")


@given(st.text(max_size=120))
def test_hypothesis_parse_never_raises_anything_but_topic_error(text: str) -> None:
    try:
        parsed = parse_topic(text)
    except TopicError:
        return
    assert text.startswith(f"fedge/v1/{parsed.fleet}/")
