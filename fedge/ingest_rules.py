"""Ingest rules: one message of a fleet → points, or a typed rejection (pure, sans-I/O).

:meth:`IngestRules.convert` takes a topic, the payload bytes and the ingest clock's
value when the message arrived, and returns :class:`Accepted` (the points),
:class:`Ignored` (deliberately not ingested, not an error) or raises
:class:`~fedge.errors.IngestRejectedError` whose ``reason``
(:class:`~fedge.errors.IngestReject`) says why. No threads, no clock, no sink: the
I/O loop (``aggregator.ingest.IngestService``) queues messages, calls this and
writes the points.

Checks, in order: topic, fleet of the topic, size, signature (security mode
``verify``: the device's key from the registry, or the aggregator's for round
summaries; telemetry, predictions and summaries also pass a
:class:`~fedge.signing.ReplayGuard`, so a nonce is taken once and only while
fresh; an ``online`` status must be fresh and no older than the device's last,
:class:`~fedge.signing.StatusStamps`), JSON/schema, fleet and device of the
payload against the topic, device allowlist, timestamps (the wire models already
bound them to 2000–2100; readings more than ``max_future_s`` ahead of
``received_at`` are refused one by one, a message whose every reading is ahead
as a whole). A message that fails verification is refused under its signature
reason (``unsigned``, ``bad_signature``, ``unknown_device``, ``replay``, ...) and
nothing of it is stored. In mode ``off`` signed envelopes are unwrapped unchecked.

De-duplication (:class:`Deduplicator`): QoS 1 redelivers messages, so each device
keeps a bounded window of recently seen sequence numbers with their device
timestamps; a reading whose ``(device, seq)`` was seen with the same timestamp is a
duplicate. The same seq with a *different* timestamp is a restarted counter (an
agent reinstalled without its state), not a redelivery, and is kept. Memory is
bounded by ``dedup_window`` seqs per device and ``max_tracked_devices`` devices
(least recently seen device forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress
from typing import TypeVar

from pydantic import ValidationError

from fedge.errors import (
    ConfigError,
    IngestReject,
    IngestRejectedError,
    MessageError,
    RejectReason,
    SignatureError,
    SinkError,
    TopicError,
)
from fedge.lives import MaintenanceEvent
from fedge.messages import (
    MAX_MESSAGE_BYTES,
    DeviceStatus,
    Prediction,
    Reading,
    RoundSummary,
    TelemetryBatch,
    decode_message,
)
from fedge.points import (
    Point,
    PointBatch,
    event_points,
    health_points,
    prediction_points,
    round_points,
    telemetry_lines,
    telemetry_points,
)
from fedge.signing import Authenticator, ReplayGuard, StatusStamps
from fedge.topics import TopicKind, parse_topic

__all__ = [
    "Accepted",
    "Deduplicator",
    "Ignored",
    "IngestReject",
    "IngestRejectedError",
    "IngestRules",
    "SeqWindow",
]

_M = TypeVar("_M", TelemetryBatch, Prediction, DeviceStatus, RoundSummary, MaintenanceEvent)

_INGESTED = frozenset(
    {TopicKind.TELEMETRY, TopicKind.PREDICTION, TopicKind.STATUS, TopicKind.ROUND_SUMMARY}
)

# A signature failure, as the ingest counts it.
_SIGNATURE_REJECT = {
    RejectReason.UNSIGNED: IngestReject.UNSIGNED,
    RejectReason.BAD_SIGNATURE: IngestReject.BAD_SIGNATURE,
    RejectReason.WRONG_SIGNER: IngestReject.WRONG_SIGNER,
    RejectReason.UNKNOWN_DEVICE: IngestReject.UNKNOWN_DEVICE,
    RejectReason.REPLAY: IngestReject.REPLAY,
    RejectReason.STALE: IngestReject.STALE,
    RejectReason.CLOCK_SKEW: IngestReject.CLOCK_SKEW,
    RejectReason.TOPIC_MISMATCH: IngestReject.TOPIC_MISMATCH,
    RejectReason.TOO_LARGE: IngestReject.TOO_LARGE,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that becomes ``points`` (possibly none: every reading a duplicate).

    ``duplicates`` counts readings dropped as redeliveries, ``future_readings``
    readings dropped for a timestamp too far ahead (the rest of the batch is kept).
    """

    points: Sequence[Point]
    duplicates: int = 0
    future_readings: int = 0
    #: Telemetry with ``track_readings``: the device and every ``(seq, ts)`` of the
    #: message that ingest has now dealt with (kept, duplicate or refused as future),
    #: and what the device says it still owes (``TelemetryBatch.unconfirmed_from_seq``
    #: and its time; None from devices without the field).
    device: str | None = None
    readings: tuple[tuple[int, float], ...] = ()
    unconfirmed_from: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message deliberately not ingested, which is not an error (``detail`` says what)."""

    detail: str


class SeqWindow:
    """Recently seen ``seq -> device ts`` of one device, bounded, oldest evicted first."""

    __slots__ = ("_seen", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, seq: int, ts: float) -> bool:
        """Record ``seq``; return True if it was already seen with the same timestamp."""
        window = self._seen
        previous = window.get(seq)
        if previous is not None:
            if previous == ts:
                return True
            window.move_to_end(seq)  # a restarted counter: now the newest entry
        window[seq] = ts
        while len(window) > self._size:
            window.popitem(last=False)
        return False

    def fresh(self, readings: Sequence[Reading]) -> list[bool]:
        """:meth:`seen` for each reading in order, negated: True where the reading is new."""
        seqs = [r.seq for r in readings]
        window = self._seen
        if len(set(seqs)) == len(seqs) and window.keys().isdisjoint(seqs):
            # The usual case, all new and distinct: one bulk insert, same final window.
            window.update(zip(seqs, [r.ts for r in readings], strict=True))
            while len(window) > self._size:
                window.popitem(last=False)
            return [True] * len(seqs)
        return [not self.seen(r.seq, r.ts) for r in readings]


class Deduplicator:
    """One :class:`SeqWindow` per device, at most ``max_devices`` of them (LRU). Not thread-safe."""

    __slots__ = ("_max_devices", "_window_size", "_windows")

    def __init__(self, *, window_size: int = 4096, max_devices: int = 100_000) -> None:
        if window_size < 1 or max_devices < 1:
            raise ConfigError("dedup window and tracked devices must be at least 1")
        self._window_size = window_size
        self._max_devices = max_devices
        self._windows: OrderedDict[str, SeqWindow] = OrderedDict()

    def fresh(self, device: str, readings: Sequence[Reading]) -> list[bool]:
        """Record the readings of ``device``; True where a reading is not a redelivery."""
        return self._window(device).fresh(readings)

    @property
    def devices(self) -> list[str]:
        """The devices remembered, least recently seen first."""
        return list(self._windows)

    def remembered(self, device: str) -> int:
        """How many seqs of ``device`` are remembered (0 for a device not tracked)."""
        window = self._windows.get(device)
        return 0 if window is None else len(window)

    def _window(self, device: str) -> SeqWindow:
        window = self._windows.get(device)
        if window is None:
            window = self._windows[device] = SeqWindow(self._window_size)
            while len(self._windows) > self._max_devices:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(device)
        return window


class IngestRules:
    """What one fleet's ingest accepts, and the points it makes of it.

    Stateful only through its :class:`Deduplicator` (``dedup``); call from one thread.
    With ``telemetry_as_lines`` telemetry comes back as a
    :class:`~fedge.points.PointBatch` formatted straight to line protocol (no
    :class:`~fedge.points.Point` per reading unless someone asks for the points),
    for sinks that write line protocol. With ``track_readings`` an accepted telemetry
    message also names its device and every ``(seq, ts)`` it carried (ingest's
    stored-up-to confirmations are built from them).
    """

    def __init__(
        self,
        *,
        fleet: str,
        known_devices: Collection[str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_future_s: float = 86_400.0,
        dedup_window: int = 4096,
        max_tracked_devices: int = 100_000,
        telemetry_as_lines: bool = False,
        authenticator: Authenticator | None = None,
        replay_guard: ReplayGuard | None = None,
        status_stamps: StatusStamps | None = None,
        track_readings: bool = False,
    ) -> None:
        self.fleet = fleet
        self.authenticator = authenticator or Authenticator("off")
        self.replay_guard = replay_guard or ReplayGuard()
        self.status_stamps = status_stamps or StatusStamps()
        self.track_readings = track_readings
        self.known_devices = None if known_devices is None else frozenset(known_devices)
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        self.telemetry_as_lines = telemetry_as_lines
        self.dedup = Deduplicator(window_size=dedup_window, max_devices=max_tracked_devices)

    def convert(self, topic: str, payload: bytes, *, received_at: float) -> Accepted | Ignored:
        """The points of one message received at ``received_at`` (Unix seconds).

        Raises :class:`~fedge.errors.IngestRejectedError` for a message that is refused.
        """
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            raise IngestRejectedError(IngestReject.BAD_TOPIC, str(exc)) from exc
        if parsed.fleet != self.fleet:
            raise IngestRejectedError(
                IngestReject.WRONG_FLEET, f"{topic} is not fleet {self.fleet}"
            )
        if parsed.kind is TopicKind.STATUS and not payload:
            # An empty retained payload clears a decommissioned device's status.
            return Ignored(f"{topic}: retained status cleared")
        # A signed envelope carries the message as a JSON string: at most twice as long.
        envelope_limit = 2 * self.max_message_bytes + 1024
        if len(payload) > envelope_limit:
            raise IngestRejectedError(
                IngestReject.TOO_LARGE,
                f"{len(payload)} bytes on {topic} (limit {envelope_limit})",
            )
        payload, signed_at = self._open(parsed.kind, topic, payload, received_at)
        if len(payload) > self.max_message_bytes:
            raise IngestRejectedError(
                IngestReject.TOO_LARGE,
                f"{len(payload)} bytes on {topic} (limit {self.max_message_bytes})",
            )
        try:
            return self._convert(parsed.kind, parsed.device, topic, payload, received_at, signed_at)
        except (MessageError, SinkError) as exc:
            # Decoded fine but cannot become points (reserved sensor name, bad field key).
            raise IngestRejectedError(IngestReject.INVALID_SCHEMA, f"{topic}: {exc}") from exc

    def _open(
        self, kind: TopicKind, topic: str, payload: bytes, received_at: float
    ) -> tuple[bytes, float | None]:
        """The message inside ``payload``, authenticated; its signed stamp (None if off)."""
        if kind not in _INGESTED:
            return payload, None  # refused as UNEXPECTED_TOPIC by _convert
        # Retained statuses carry no replay guard (StatusStamps checks them after decoding).
        guard = None if kind is TopicKind.STATUS else self.replay_guard
        try:
            return self.authenticator.open_stamped(
                payload,
                topic,
                now=received_at,
                guard=guard,
                max_bytes=2 * self.max_message_bytes + 1024,
            )
        except SignatureError as exc:
            reject = _SIGNATURE_REJECT.get(exc.reason, IngestReject.MALFORMED_JSON)
            raise IngestRejectedError(reject, f"{topic}: {exc.detail}") from exc

    def _convert(
        self,
        kind: TopicKind,
        topic_device: str | None,
        topic: str,
        payload: bytes,
        received_at: float,
        signed_at: float | None = None,
    ) -> Accepted:
        match kind:
            case TopicKind.TELEMETRY:
                batch = self._decode(TelemetryBatch, topic, payload)
                self._check_origin(batch.fleet, batch.device, topic_device, topic)
                return self._telemetry(batch, received_at, payload)
            case TopicKind.PREDICTION:
                pred = self._decode(Prediction, topic, payload)
                self._check_origin(pred.fleet, pred.device, topic_device, topic)
                self._check_future(pred.ts, received_at, topic)
                return Accepted(prediction_points(pred))
            case TopicKind.STATUS:
                status = self._decode(DeviceStatus, topic, payload)
                self._check_origin(status.fleet, status.device, topic_device, topic)
                if signed_at is not None:
                    self._check_stamp(status, signed_at, received_at, topic)
                if status.ts is not None:
                    self._check_future(status.ts, received_at, topic)
                return Accepted(health_points(status, received_at=received_at))
            case TopicKind.EVENTS:
                event = self._decode(MaintenanceEvent, topic, payload)
                self._check_origin(event.fleet, event.device, topic_device, topic)
                self._check_future(event.ts, received_at, topic)
                return Accepted(event_points(event))
            case TopicKind.ROUND_SUMMARY:
                summary = self._decode(RoundSummary, topic, payload)
                if summary.fleet != self.fleet:
                    raise IngestRejectedError(
                        IngestReject.WRONG_FLEET, f"summary names fleet {summary.fleet}"
                    )
                self._check_future(summary.ts, received_at, topic)
                return Accepted(round_points(summary))
        raise IngestRejectedError(IngestReject.UNEXPECTED_TOPIC, f"not an ingested topic: {topic}")

    def _decode(self, model: type[_M], topic: str, payload: bytes) -> _M:
        try:
            return decode_message(model, payload, max_bytes=self.max_message_bytes)
        except MessageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError) and any(
                e["type"] == "json_invalid" for e in cause.errors(include_url=False)
            ):
                raise IngestRejectedError(IngestReject.MALFORMED_JSON, f"{topic}: {exc}") from exc
            raise IngestRejectedError(IngestReject.INVALID_SCHEMA, f"{topic}: {exc}") from exc

    def _check_origin(self, fleet: str, device: str, topic_device: str | None, topic: str) -> None:
        if fleet != self.fleet:
            raise IngestRejectedError(
                IngestReject.WRONG_FLEET, f"{topic}: payload names fleet {fleet!r}"
            )
        if device != topic_device:
            raise IngestRejectedError(
                IngestReject.TOPIC_MISMATCH, f"{topic}: payload names device {device!r}"
            )
        if self.known_devices is not None and device not in self.known_devices:
            raise IngestRejectedError(
                IngestReject.UNKNOWN_DEVICE, f"{topic}: device {device!r} not allowed"
            )

    def _check_stamp(
        self, status: DeviceStatus, signed_at: float, received_at: float, topic: str
    ) -> None:
        try:
            self.status_stamps.check(
                status.device, signed_at, online=status.state == "online", now=received_at
            )
        except SignatureError as exc:
            reject = _SIGNATURE_REJECT.get(exc.reason, IngestReject.STALE)
            raise IngestRejectedError(reject, f"{topic}: {exc.detail}") from exc

    def _check_future(self, ts: float, received_at: float, topic: str) -> None:
        if ts > received_at + self.max_future_s:
            raise IngestRejectedError(
                IngestReject.FUTURE_TIMESTAMP,
                f"{topic}: ts {ts:.3f} is {ts - received_at:.0f}s ahead of the ingest clock",
            )

    def _telemetry(self, batch: TelemetryBatch, received_at: float, payload: bytes) -> Accepted:
        limit = received_at + self.max_future_s
        readings = batch.readings
        future = sum(1 for r in readings if r.ts > limit)
        if future == len(readings):
            raise IngestRejectedError(
                IngestReject.FUTURE_TIMESTAMP,
                f"all {future} reading(s) of {batch.device} are more than "
                f"{self.max_future_s:.0f}s ahead of the ingest clock",
            )
        accepted = partial(Accepted, future_readings=future)
        if self.track_readings:
            seq, ts = batch.unconfirmed_from_seq, batch.unconfirmed_from_ts
            accepted = partial(
                accepted,
                device=batch.device,
                readings=tuple((r.seq, r.ts) for r in readings),
                unconfirmed_from=None if seq is None or ts is None else (seq, ts),
            )
        current: list[int] = []
        if future:
            current = [i for i, r in enumerate(readings) if r.ts <= limit]
            batch = batch.model_copy(update={"readings": [readings[i] for i in current]})
        # Convert before recording seqs: a batch that cannot be encoded must not mark
        # its seqs as seen.
        if not self.telemetry_as_lines:
            points = telemetry_points(batch)
            fresh = self.dedup.fresh(batch.device, batch.readings)
            kept = sum(fresh)
            return accepted(list(compress(points, fresh)), len(fresh) - kept)
        # Line protocol straight from the message. Points are built only if someone asks
        # for them, by decoding the payload again, so no decoded model outlives this
        # call (it would only feed the garbage collector while a drain is written).
        lines = telemetry_lines(batch)
        fresh = self.dedup.fresh(batch.device, batch.readings)
        kept = sum(fresh)
        if kept < len(fresh):
            lines = list(compress(lines, fresh))
        keep: tuple[int, ...] | None = None
        if future or kept < len(fresh):
            positions = current if future else range(len(readings))
            keep = tuple(compress(positions, fresh))
        make_points = partial(_points_again, payload, keep)
        return accepted(PointBatch(lines=lines, make_points=make_points), len(fresh) - kept)


def _points_again(payload: bytes, keep: tuple[int, ...] | None) -> list[Point]:
    """The points of the kept readings of a telemetry payload that was accepted before."""
    batch = decode_message(TelemetryBatch, payload, max_bytes=len(payload))
    if keep is not None:
        readings = batch.readings
        batch = batch.model_copy(update={"readings": [readings[i] for i in keep]})
    return telemetry_points(batch)
