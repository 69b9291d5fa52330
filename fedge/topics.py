"""Topic builder and parser for wire protocol v1 (pure, no I/O).

All topics live under ``fedge/v1/<fleet>/``:

==========================================  ======  ===  ="""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from fedge.errors import TopicError

__all__ = [
    "PROTOCOL_ROOT",
    "ParsedTopic",
    "TopicKind",
    "Topics",
    "parse_topic",
    "validate_segment",
]

PROTOCOL_ROOT = "fedge/v1"

# Identifiers are restricted so they can never contain MQTT wildcards, separators,
# or characters that InfluxDB tags and file names would need escaping for.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TopicKind(StrEnum):
    """The kind of a fedge v1 topic."""

    TELEMETRY = "telemetry"
    STATUS = "status"
    PREDICTION = "prediction"
    EVENTS = "events"
    ROUND_CURRENT = "round_current"
    UPDATE = "update"
    UPDATE_CHUNK = "update_chunk"
    ROUND_SUMMARY = "round_summary"
    GLOBAL_MODEL = "global_model"


def validate_segment(value: str, *, what: str) -> str:
    """Return ``value`` if it is a valid fleet/device identifier, else raise TopicError."""
    if not isinstance(value, str) or _SEGMENT.fullmatch(value) is None:
        raise TopicError(
            f"invalid {what} {value!r}: use 1-64 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic split into its parts. ``device`` and ``round_id`` are set where the kind has them."""

    kind: TopicKind
    fleet: str
    device: str | None = None
    round_id: int | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds every topic (and subscription filter) for one fleet."""

    fleet: str

    def __post_init__(self) -> None:
        validate_segment(self.fleet, what="fleet")

    @property
    def root(self) -> str:
        return f"{PROTOCOL_ROOT}/{self.fleet}"

    def _device(self, device: str, leaf: str) -> str:
        validate_segment(device, what="device")
        return f"{self.root}/devices/{device}/{leaf}"

    def telemetry(self, device: str) -> str:
        return self._device(device, "telemetry")

    def status(self, device: str) -> str:
        return self._device(device, "status")

    def prediction(self, device: str) -> str:
        return self._device(device, "prediction")

    def events(self, device: str) -> str:
        """Maintenance events of one machine: published by its agent (failures the source
        reported, events recorded with ``fedge agent event``) and by operator tools."""
        return self._device(device, "events")

    def stored(self, device: str) -> str:
        """Retained by ingest: how far the device's telemetry is durably stored (StoredAck)."""
        return self._device(device, "stored")

    @property
    def round_current(self) -> str:
        return f"{self.root}/rounds/current"

    def update(self, round_id: int, device: str) -> str:
        if isinstance(round_id, bool) or not isinstance(round_id, int) or round_id < 0:
            raise TopicError(f"round id must be a non-negative integer, got {round_id!r}")
        validate_segment(device, what="device")
        return f"{self.root}/rounds/{round_id}/updates/{device}"

    def update_chunks(self, round_id: int, device: str) -> str:
        """Where a device publishes the chunks of an update frame too large for one message."""
        return f"{self.update(round_id, device)}/chunks"

    @property
    def round_summary(self) -> str:
        return f"{self.root}/rounds/summary"

    @property
    def global_model(self) -> str:
        return f"{self.root}/model/global"

    # Subscription filters -------------------------------------------------------------
    @property
    def all_telemetry(self) -> str:
        return f"{self.root}/devices/+/telemetry"

    @property
    def all_status(self) -> str:
        return f"{self.root}/devices/+/status"

    @property
    def all_predictions(self) -> str:
        return f"{self.root}/devices/+/prediction"

    @property
    def all_events(self) -> str:
        return f"{self.root}/devices/+/events"

    @property
    def all_stored(self) -> str:
        return f"{self.root}/devices/+/stored"

    @property
    def all_updates(self) -> str:
        return f"{self.root}/rounds/+/updates/+"

    @property
    def all_update_chunks(self) -> str:
        return f"{self.root}/rounds/+/updates/+/chunks"


def _parse_round(text: str) -> int:
    # str.isdigit accepts non-ASCII digits; the wire only allows ASCII, no sign, no padding.
    if not re.fullmatch(r"0|[1-9][0-9]{0,17}", text):
        raise TopicError(f"invalid round id segment {text!r}")
    return int(text)


def parse_topic(topic: str) -> ParsedTopic:
    """Parse a concrete (wildcard-free) fedge v1 topic. Raises TopicError if it is not one."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PROTOCOL_ROOT:
        raise TopicError(f"not a {PROTOCOL_ROOT} topic: {topic!r}")
    fleet = validate_segment(parts[2], what="fleet")
    rest = parts[3:]
    match rest:
        case ["devices", device, "telemetry"]:
            return ParsedTopic(TopicKind.TELEMETRY, fleet, validate_segment(device, what="device"))
        case ["devices", device, "status"]:
            return ParsedTopic(TopicKind.STATUS, fleet, validate_segment(device, what="device"))
        case ["devices", device, "prediction"]:
            return ParsedTopic(TopicKind.PREDICTION, fleet, validate_segment(device, what="device"))
        case ["devices", device, "events"]:
            return ParsedTopic(TopicKind.EVENTS, fleet, validate_segment(device, what="device"))
        case ["rounds", "current"]:
            return ParsedTopic(TopicKind.ROUND_CURRENT, fleet)
        case ["rounds", "summary"]:
            return ParsedTopic(TopicKind.ROUND_SUMMARY, fleet)
        case ["rounds", round_text, "updates", device]:
            return ParsedTopic(
                TopicKind.UPDATE,
                fleet,
                validate_segment(device, what="device"),
                _parse_round(round_text),
            )
        case ["rounds", round_text, "updates", device, "chunks"]:
            return ParsedTopic(
                TopicKind.UPDATE_CHUNK,
                fleet,
                validate_segment(device, what="device"),
                _parse_round(round_text),
            )
        case ["model", "global"]:
            return ParsedTopic(TopicKind.GLOBAL_MODEL, fleet)
    raise TopicError(f"unknown fedge topic: {topic!r}")
