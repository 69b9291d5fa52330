"""Telemetry ingestion: MQTT messages of one fleet → validated, de-duplicated points → a sink.

The transport callback (:meth:`IngestService.handle`) only timestamps the message
and puts it on a bounded queue; a worker thread decodes, validates, de-duplicates,
converts to points (:mod:`fedge.points`) and writes them to the sink in batches.

Every message that is not written is counted by reason (:class:`IngestReject`) and
logged; a bad message never stops the service. Checks, in order: topic, size,
JSON/schema, fleet, topic/payload device, device allowlist, timestamps (the wire
models already bound them to 2000–2100; readings more than ``max_future_s`` ahead
of the ingest clock are refused one by one).

De-duplication: QoS 1 redelivers messages, so each device keeps a bounded window
of recently seen sequence numbers with their device timestamps; a reading whose
``(device, seq)`` was seen with the same timestamp is a duplicate. The same seq
with a *different* timestamp is a restarted counter (an agent reinstalled without
its state), not a redelivery, and is kept. Memory is bounded by
``dedup_window`` seqs per device and ``max_tracked_devices`` devices (LRU).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import compress
from typing import TypeVar

from pydantic import ValidationError

from aggregator.sinks.base import Sink
from fedge.errors import FedgeError, MessageError, SinkError, TopicError
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
    health_points,
    prediction_points,
    round_points,
    telemetry_lines,
    telemetry_points,
)
from fedge.topics import TopicKind, Topics, parse_topic, validate_segment
from fedge.transport import InboundMessage, Transport, drain

__all__ = ["IngestReject", "IngestService", "IngestStats"]

log = logging.getLogger(__name__)


_M = TypeVar("_M", TelemetryBatch, Prediction, DeviceStatus, RoundSummary)


class IngestReject(StrEnum):
    """Why a message (or a single reading) was not written."""

    BAD_TOPIC = "bad_topic"
    UNEXPECTED_TOPIC = "unexpected_topic"
    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    INVALID_SCHEMA = "invalid_schema"
    WRONG_FLEET = "wrong_fleet"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    FUTURE_TIMESTAMP = "future_timestamp"
    QUEUE_FULL = "queue_full"
    SINK_REFUSED = "sink_refused"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class IngestStats:
    """A snapshot of the ingest counters.

    ``rejected`` counts whole messages by reason; ``rejected_readings`` counts single
    readings dropped from otherwise valid telemetry batches (future timestamps);
    ``duplicates`` counts readings dropped as redeliveries; ``points_lost`` counts
    points the sink refused until the service stopped.
    """

    received: int
    accepted: int
    points_written: int
    duplicates: int
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_readings: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    write_errors: int = 0
    points_lost: int = 0
    queue_depth: int = 0

    @property
    def rejected_total(self) -> int:
        """All rejected messages."""
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class _Queued:
    message: InboundMessage
    received_at: float


class _Reject(Exception):
    """Internal: abort processing of one message with a counted reason."""

    def __init__(self, reason: IngestReject, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _SeqWindow:
    """Recently seen ``seq -> device ts`` of one device, bounded, oldest evicted first."""

    __slots__ = ("_seen", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[int, float] = OrderedDict()

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


_LOG_FIRST = 10
_LOG_EVERY = 1000


class IngestService:
    """Subscribes to one fleet's telemetry, predictions, status and round summaries.

    The sink is owned by the caller: :meth:`stop` flushes it but does not close it.
    If ``shared_group`` is set, subscriptions use ``$share/<group>/<filter>`` so
    several ingest processes split the load on an MQTT 5 broker.
    """

    def __init__(
        self,
        transport: Transport,
        sink: Sink,
        *,
        fleet: str,
        known_devices: Collection[str] | None = None,
        shared_group: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_future_s: float = 86_400.0,
        dedup_window: int = 4096,
        max_tracked_devices: int = 100_000,
        queue_size: int = 10_000,
        enqueue_timeout_s: float = 1.0,
        batch_messages: int = 500,
        sink_retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.sink = sink
        # A sink that writes line protocol (InfluxSink) takes telemetry preformatted.
        self._line_protocol = bool(getattr(sink, "line_protocol", False))
        self.topics = Topics(fleet)
        self.fleet = fleet
        self.known_devices = None if known_devices is None else frozenset(known_devices)
        if shared_group is not None:
            validate_segment(shared_group, what="shared subscription group")
        self.shared_group = shared_group
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        self.dedup_window = dedup_window
        self.max_tracked_devices = max_tracked_devices
        self.enqueue_timeout_s = enqueue_timeout_s
        self.batch_messages = batch_messages
        self.sink_retry_s = sink_retry_s
        self.clock = clock

        self._queue: queue.Queue[_Queued] = queue.Queue(maxsize=queue_size)
        self._windows: OrderedDict[str, _SeqWindow] = OrderedDict()
        self._stats_lock = threading.Lock()
        self._received = 0
        self._accepted = 0
        self._written = 0
        self._duplicates = 0
        self._ignored = 0
        self._write_errors = 0
        self._lost = 0
        self._rejected: Counter[str] = Counter()
        self._rejected_readings: Counter[str] = Counter()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._connected_here = False

    # Lifecycle -------------------------------------------------------------------------
    @property
    def subscriptions(self) -> list[str]:
        """The topic filters this service subscribes to."""
        filters = [
            self.topics.all_telemetry,
            self.topics.all_predictions,
            self.topics.all_status,
            self.topics.round_summary,
        ]
        if self.shared_group:
            return [f"$share/{self.shared_group}/{f}" for f in filters]
        return filters

    def start(self, *, connect: bool = True) -> None:
        """Start the worker and subscribe.

        With ``connect=True`` the service connects the transport itself (routing every
        message to :meth:`handle`); pass ``False`` when the transport is shared and
        already connected, and route this fleet's messages to :meth:`handle` yourself.
        """
        if self._worker is not None:
            raise FedgeError("ingest service already started")
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="fedge-ingest", daemon=True)
        self._worker.start()
        try:
            if connect:
                self.transport.connect(on_message=self.handle)
                self._connected_here = True
            for topic_filter in self.subscriptions:
                self.transport.subscribe(topic_filter, qos=1)
        except BaseException:
            self.stop(timeout=1.0)
            raise
        log.info("ingesting fleet %r from %s", self.fleet, ", ".join(self.subscriptions))

    def stop(self, timeout: float = 10.0) -> None:
        """Drain the queue, write what is left, flush the sink; disconnect if we connected."""
        deadline = time.monotonic() + timeout
        if self._connected_here:
            # Stop new deliveries first so the drain below has an end.
            with contextlib.suppress(FedgeError):
                self.transport.close()
            self._connected_here = False
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stop.set()
            worker.join(max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("ingest worker still busy after %.1fs", timeout)
        try:
            self.sink.flush(max(0.1, deadline - time.monotonic()))
        except SinkError as exc:
            log.warning("sink not fully flushed at stop (data kept by the sink): %s", exc)

    # Transport thread ------------------------------------------------------------------
    def handle(self, message: InboundMessage) -> None:
        """Transport callback: enqueue the message, never block long, never raise."""
        with self._stats_lock:
            self._received += 1
        try:
            # A short blocking put pushes back on the broker connection when the sink is
            # slow, instead of dropping at the first burst.
            self._queue.put(_Queued(message, self.clock()), timeout=self.enqueue_timeout_s)
        except queue.Full:
            self._reject(IngestReject.QUEUE_FULL, f"ingest queue full, dropped {message.topic}")

    # Worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items = drain(self._queue, timeout=0.1, limit=self.batch_messages)
            if not items:
                if self._stop.is_set():
                    return
                continue
            parts = [part for part in map(self._process, items) if part]
            if parts:
                # One sink write for the whole drain: one spool append (one fsync) and
                # large HTTP batches, with telemetry already formatted as line protocol.
                self._write(PointBatch.concat(parts))

    def _write(self, points: Sequence[Point]) -> None:
        while True:
            try:
                self.sink.write(points)
            except SinkError as exc:
                with self._stats_lock:
                    self._write_errors += 1
                if self._stop.is_set():
                    with self._stats_lock:
                        self._lost += len(points)
                    self._reject(IngestReject.SINK_REFUSED, f"{len(points)} point(s) lost: {exc}")
                    return
                # The sink refuses only when its durable buffer is full: wait, and let the
                # bounded queue push back on the broker meanwhile.
                log.warning("sink refused %d point(s), retrying: %s", len(points), exc)
                self._stop.wait(self.sink_retry_s)
                continue
            with self._stats_lock:
                self._written += len(points)
            return

    def _process(self, item: _Queued) -> Sequence[Point]:
        try:
            points = self._convert(item)
            if points is None:
                with self._stats_lock:
                    self._ignored += 1
                return []
        except _Reject as rej:
            self._reject(rej.reason, rej.detail)
            return []
        except (MessageError, SinkError) as exc:
            # Decoded fine but cannot become points (reserved sensor name, bad field key).
            self._reject(IngestReject.INVALID_SCHEMA, f"{item.message.topic}: {exc}")
            return []
        except Exception:  # one bad message must never stop ingestion
            log.exception("unexpected error ingesting %s", item.message.topic)
            self._reject(IngestReject.INTERNAL, f"unexpected error on {item.message.topic}")
            return []
        with self._stats_lock:
            self._accepted += 1
        return points

    def _convert(self, item: _Queued) -> Sequence[Point] | None:
        """Points for one message, None if it is deliberately ignored; raises _Reject."""
        message = item.message
        try:
            topic = parse_topic(message.topic)
        except TopicError as exc:
            raise _Reject(IngestReject.BAD_TOPIC, str(exc)) from exc
        if topic.fleet != self.fleet:
            raise _Reject(IngestReject.WRONG_FLEET, f"{message.topic} is not fleet {self.fleet}")
        if topic.kind is TopicKind.STATUS and not message.payload:
            # An empty retained payload clears a decommissioned device's status: not an error.
            return None
        if len(message.payload) > self.max_message_bytes:
            raise _Reject(
                IngestReject.TOO_LARGE,
                f"{len(message.payload)} bytes on {message.topic} (limit {self.max_message_bytes})",
            )
        match topic.kind:
            case TopicKind.TELEMETRY:
                batch = self._decode(TelemetryBatch, message)
                self._check_origin(batch.fleet, batch.device, topic.device, message.topic)
                return self._telemetry(batch, item.received_at, message.payload)
            case TopicKind.PREDICTION:
                pred = self._decode(Prediction, message)
                self._check_origin(pred.fleet, pred.device, topic.device, message.topic)
                self._check_future(pred.ts, item.received_at, message.topic)
                return prediction_points(pred)
            case TopicKind.STATUS:
                status = self._decode(DeviceStatus, message)
                self._check_origin(status.fleet, status.device, topic.device, message.topic)
                if status.ts is not None:
                    self._check_future(status.ts, item.received_at, message.topic)
                return health_points(status, received_at=item.received_at)
            case TopicKind.ROUND_SUMMARY:
                summary = self._decode(RoundSummary, message)
                if summary.fleet != self.fleet:
                    raise _Reject(IngestReject.WRONG_FLEET, f"summary names fleet {summary.fleet}")
                self._check_future(summary.ts, item.received_at, message.topic)
                return round_points(summary)
        raise _Reject(IngestReject.UNEXPECTED_TOPIC, f"not an ingested topic: {message.topic}")

    def _decode(self, model: type[_M], message: InboundMessage) -> _M:
        try:
            return decode_message(model, message.payload, max_bytes=self.max_message_bytes)
        except MessageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError) and any(
                e["type"] == "json_invalid" for e in cause.errors(include_url=False)
            ):
                raise _Reject(IngestReject.MALFORMED_JSON, f"{message.topic}: {exc}") from exc
            raise _Reject(IngestReject.INVALID_SCHEMA, f"{message.topic}: {exc}") from exc

    def _check_origin(self, fleet: str, device: str, topic_device: str | None, topic: str) -> None:
        if fleet != self.fleet:
            raise _Reject(IngestReject.WRONG_FLEET, f"{topic}: payload names fleet {fleet!r}")
        if device != topic_device:
            raise _Reject(IngestReject.TOPIC_MISMATCH, f"{topic}: payload names device {device!r}")
        if self.known_devices is not None and device not in self.known_devices:
            raise _Reject(IngestReject.UNKNOWN_DEVICE, f"{topic}: device {device!r} not allowed")

    def _check_future(self, ts: float, received_at: float, topic: str) -> None:
        if ts > received_at + self.max_future_s:
            raise _Reject(
                IngestReject.FUTURE_TIMESTAMP,
                f"{topic}: ts {ts:.3f} is {ts - received_at:.0f}s ahead of the ingest clock",
            )

    def _window(self, device: str) -> _SeqWindow:
        window = self._windows.get(device)
        if window is None:
            window = self._windows[device] = _SeqWindow(self.dedup_window)
            while len(self._windows) > self.max_tracked_devices:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(device)
        return window

    def _telemetry(
        self, batch: TelemetryBatch, received_at: float, payload: bytes
    ) -> Sequence[Point]:
        limit = received_at + self.max_future_s
        readings = batch.readings
        future = [r for r in readings if r.ts > limit]
        if len(future) == len(readings):
            raise _Reject(
                IngestReject.FUTURE_TIMESTAMP,
                f"all {len(future)} reading(s) of {batch.device} are more than "
                f"{self.max_future_s:.0f}s ahead of the ingest clock",
            )
        if future:
            with self._stats_lock:
                self._rejected_readings[IngestReject.FUTURE_TIMESTAMP] += len(future)
            log.warning("%s: dropped %d reading(s) from the future", batch.device, len(future))
            current = [i for i, r in enumerate(readings) if r.ts <= limit]
            batch = batch.model_copy(update={"readings": [readings[i] for i in current]})
        # Convert before recording seqs: a batch that cannot be encoded must not mark
        # its seqs as seen.
        if not self._line_protocol:
            points = telemetry_points(batch)
            fresh = self._window(batch.device).fresh(batch.readings)
            self._count_duplicates(fresh)
            return list(compress(points, fresh))
        # A line-protocol sink: telemetry goes straight to line protocol (no Point per
        # reading). Points are built only if someone asks for them, by decoding the
        # payload again, so no decoded model outlives this call (it would only feed the
        # garbage collector while the worker's drain is written).
        lines = telemetry_lines(batch)
        fresh = self._window(batch.device).fresh(batch.readings)
        kept = self._count_duplicates(fresh)
        if kept < len(fresh):
            lines = list(compress(lines, fresh))
        if not future and kept == len(fresh):
            keep: tuple[int, ...] | None = None
        else:
            positions = current if future else range(len(readings))
            keep = tuple(compress(positions, fresh))
        return PointBatch(lines=lines, make_points=partial(self._points_again, payload, keep))

    def _count_duplicates(self, fresh: list[bool]) -> int:
        """Count the readings that are not fresh as duplicates; return how many are fresh."""
        kept = sum(fresh)
        if kept < len(fresh):
            with self._stats_lock:
                self._duplicates += len(fresh) - kept
        return kept

    def _points_again(self, payload: bytes, keep: tuple[int, ...] | None) -> list[Point]:
        """The points of the kept readings of a telemetry payload that was accepted before."""
        batch = decode_message(TelemetryBatch, payload, max_bytes=len(payload))
        if keep is not None:
            readings = batch.readings
            batch = batch.model_copy(update={"readings": [readings[i] for i in keep]})
        return telemetry_points(batch)

    # Counters --------------------------------------------------------------------------
    def _reject(self, reason: IngestReject, detail: str) -> None:
        with self._stats_lock:
            self._rejected[reason] += 1
            count = self._rejected[reason]
        # Log the first few of each reason, then every 1000th, so a flood stays visible
        # without drowning the log.
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            log.warning("rejected message (%s, #%d): %s", reason.value, count, detail)

    @property
    def stats(self) -> IngestStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return IngestStats(
                received=self._received,
                accepted=self._accepted,
                points_written=self._written,
                duplicates=self._duplicates,
                rejected={str(k): v for k, v in self._rejected.items()},
                rejected_readings={str(k): v for k, v in self._rejected_readings.items()},
                ignored=self._ignored,
                write_errors=self._write_errors,
                points_lost=self._lost,
                queue_depth=self._queue.qsize(),
            )
