"""Telemetry ingestion: MQTT messages of one fleet → validated, de-duplicated points → a sink.

The I/O loop around the pure rules of :mod:`fedge.ingest_rules` (which checks what,
in which order, and how de-duplication works is documented there). The transport
callback (:meth:`IngestService.handle`) only timestamps the message and puts it on
a bounded queue; a worker thread drains the queue, hands each message to
:class:`~fedge.ingest_rules.IngestRules` and writes the points of a whole drain to
the sink in one call, retrying while the sink refuses.

Every message that is not written is counted by reason (:class:`IngestReject`) and
logged; a bad message never stops the service.

Acknowledgements: over a transport with manual acks (a persistent MQTT session,
``PahoTransport(clean_session=False, manual_ack=True)``) every message of a drain
is acknowledged to the broker only after the sink has accepted the drain's points
*durably* (SQLite: committed; InfluxDB: in the fsynced spool), and messages that
are refused, ignored or duplicates are acknowledged with them. Until then the
broker keeps the message in this client's session, so a kill -9 of ingest loses
nothing: the next start with the same client id gets every unacknowledged message
again (which is why sinks store idempotently). Such a message is never dropped for
a full queue either: the transport thread waits, pushing back on the broker.

Stored-up-to confirmations (``stored_acks=True``, not with a shared group): after
each durable write ingest updates per-device watermarks
(:mod:`aggregator.stored_acks`) and publishes the moved ones, retained, on
``devices/<device>/stored`` at most every ``stored_ack_interval_s``; on start it
picks up its own retained watermarks again. Where there is none, a device's
watermark starts from what its batches say it still owes
(``TelemetryBatch.unconfirmed_from_seq``), never from the first reading seen, unless
the agent predates that field.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from aggregator.sinks.base import Sink
from aggregator.stored_acks import StoredWatermarks, Watermark
from fedge.errors import (
    ConfigError,
    FedgeError,
    IngestReject,
    IngestRejectedError,
    MessageError,
    SinkError,
)
from fedge.ingest_rules import Accepted, IngestRules
from fedge.messages import MAX_MESSAGE_BYTES, StoredAck, decode_message, encode_message
from fedge.points import Point, PointBatch
from fedge.signing import Authenticator, ReplayGuard
from fedge.topics import Topics, validate_segment
from fedge.transport import InboundMessage, Transport, drain

__all__ = ["IngestReject", "IngestService", "IngestStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestStats:
    """A snapshot of the ingest counters.

    ``rejected`` counts whole messages by reason; ``rejected_readings`` counts single
    readings dropped from otherwise valid telemetry batches (future timestamps);
    ``duplicates`` counts readings dropped as redeliveries; ``points_lost`` counts
    points the sink refused until the service stopped (only for messages the
    transport had acknowledged already). ``acked`` counts messages acknowledged to
    the broker after a durable write; ``deferred`` counts messages left
    unacknowledged at stop (the broker delivers them again on the next start);
    ``stored_acks_published`` counts watermark messages sent.
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
    acked: int = 0
    deferred: int = 0
    stored_acks_published: int = 0

    @property
    def rejected_total(self) -> int:
        """All rejected messages."""
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class _Queued:
    message: InboundMessage
    received_at: float


_LOG_FIRST = 10
_LOG_EVERY = 1000


class IngestService:
    """Subscribes to one fleet's telemetry, predictions, status, maintenance events and
    round summaries.

    The sink is owned by the caller: :meth:`stop` flushes it but does not close it.
    If ``shared_group`` is set, subscriptions use ``$share/<group>/<filter>`` so
    several ingest processes split the load on an MQTT 5 broker. ``stored_acks``
    publishes stored-up-to watermarks (see the module docs); it needs every message
    of a device, so it cannot be combined with ``shared_group``.
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
        stored_acks: bool = False,
        stored_ack_interval_s: float = 1.0,
        stored_gap_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        authenticator: Authenticator | None = None,
        replay_guard: ReplayGuard | None = None,
    ) -> None:
        if stored_acks and shared_group is not None:
            raise ConfigError(
                "stored_acks needs all of a device's telemetry in one ingest process; "
                "it cannot be combined with a shared subscription group"
            )
        self.transport = transport
        self.sink = sink
        self.topics = Topics(fleet)
        self.fleet = fleet
        self.rules = IngestRules(
            fleet=fleet,
            known_devices=known_devices,
            max_message_bytes=max_message_bytes,
            max_future_s=max_future_s,
            dedup_window=dedup_window,
            max_tracked_devices=max_tracked_devices,
            # A sink that writes line protocol (InfluxSink) takes telemetry preformatted.
            telemetry_as_lines=sink.accepts_line_protocol,
            # Security mode "verify": every message checked against the key registry.
            authenticator=authenticator,
            replay_guard=replay_guard,
            track_readings=stored_acks,
        )
        self.watermarks: StoredWatermarks | None = (
            StoredWatermarks(gap_timeout_s=stored_gap_timeout_s, max_devices=max_tracked_devices)
            if stored_acks
            else None
        )
        self.stored_ack_interval_s = stored_ack_interval_s
        self._last_stored_publish = 0.0
        if shared_group is not None:
            validate_segment(shared_group, what="shared subscription group")
        self.shared_group = shared_group
        self.enqueue_timeout_s = enqueue_timeout_s
        self.batch_messages = batch_messages
        self.sink_retry_s = sink_retry_s
        self.clock = clock

        self._queue: queue.Queue[_Queued] = queue.Queue(maxsize=queue_size)
        self._stats_lock = threading.Lock()
        self._received = 0
        self._accepted = 0
        self._written = 0
        self._duplicates = 0
        self._ignored = 0
        self._write_errors = 0
        self._lost = 0
        self._acked = 0
        self._deferred = 0
        self._stored_published = 0
        self._rejected: Counter[str] = Counter()
        self._rejected_readings: Counter[str] = Counter()
        self._stop = threading.Event()
        self._closing = threading.Event()
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
            self.topics.all_events,
            self.topics.round_summary,
        ]
        if self.shared_group:
            return [f"$share/{self.shared_group}/{f}" for f in filters]
        if self.watermarks is not None:
            filters.append(self.topics.all_stored)  # our own retained watermarks, at start
        return filters

    def start(self, *, connect: bool = True) -> None:
        """Start the worker and subscribe.

        With ``connect=True`` the service connects the transport itself (routing every
        message to :meth:`handle`), subscribing first so that a persistent session's
        queued messages are taken the moment it is up; pass ``False`` when the
        transport is shared and already connected, and route this fleet's messages to
        :meth:`handle` yourself.
        """
        if self._worker is not None:
            raise FedgeError("ingest service already started")
        self._stop.clear()
        self._closing.clear()
        self._worker = threading.Thread(target=self._run, name="fedge-ingest", daemon=True)
        self._worker.start()
        try:
            for topic_filter in self.subscriptions:
                self.transport.subscribe(topic_filter, qos=1)
            if connect:
                self.transport.connect(on_message=self.handle)
                self._connected_here = True
        except BaseException:
            self.stop(timeout=1.0)
            raise
        log.info("ingesting fleet %r from %s", self.fleet, ", ".join(self.subscriptions))

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what is queued, disconnect if we connected, flush the sink.

        From the call on, messages that still need an ack are no longer taken (the
        broker keeps them for the next start); the worker writes and acknowledges the
        queue while the connection is still up, so a clean stop leaves nothing for the
        broker to deliver twice. Messages the transport acknowledged itself are still
        taken and written until the transport is closed.
        """
        deadline = time.monotonic() + timeout
        self._closing.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stop.set()
            worker.join(max(0.1, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("ingest worker still busy after %.1fs", timeout)
        if self._connected_here:
            with contextlib.suppress(FedgeError):
                self.transport.close()
            self._connected_here = False
        if worker is not None and not worker.is_alive():
            # Whatever came in while the worker finished (auto-acknowledged messages).
            while self._drain_once(timeout=0.0):
                pass
        try:
            self.sink.flush(max(0.1, deadline - time.monotonic()))
        except SinkError as exc:
            log.warning("sink not fully flushed at stop (data kept by the sink): %s", exc)

    # Transport thread ------------------------------------------------------------------
    def handle(self, message: InboundMessage) -> None:
        """Transport callback: enqueue the message, never raise.

        A message the transport already acknowledged waits at most
        ``enqueue_timeout_s`` for room and is dropped (counted) after that; one that
        still needs an ack waits as long as the service runs (the broker keeps it
        meanwhile, so waiting is safe and dropping it would only stall it).
        """
        with self._stats_lock:
            self._received += 1
        if message.needs_ack and self._closing.is_set():
            # Stopping: not taken, not acknowledged; the broker keeps it for next time.
            with self._stats_lock:
                self._deferred += 1
            return
        item = _Queued(message, self.clock())
        while True:
            try:
                # A short blocking put pushes back on the broker connection when the sink
                # is slow, instead of dropping at the first burst.
                self._queue.put(item, timeout=self.enqueue_timeout_s)
                return
            except queue.Full:
                if not message.needs_ack:
                    self._reject(
                        IngestReject.QUEUE_FULL, f"ingest queue full, dropped {message.topic}"
                    )
                    return
                if self._stop.is_set() or self._worker is None:
                    # Not acknowledged: the broker re-sends it on our next connection.
                    with self._stats_lock:
                        self._deferred += 1
                    return

    # Worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._drain_once(timeout=0.1):
                self._publish_watermarks()
                if self._stop.is_set():
                    return

    def _drain_once(self, *, timeout: float) -> bool:
        """Process, write and acknowledge one drain of the queue; False if it was empty."""
        items = drain(self._queue, timeout=timeout, limit=self.batch_messages)
        if not items:
            return False
        outcomes = [self._process(item) for item in items]
        parts = [o.points for o in outcomes if o is not None and o.points]
        # One sink write for the whole drain: one spool append (one fsync) and large
        # HTTP batches, with telemetry already formatted as line protocol.
        if parts and not self._write(PointBatch.concat(parts), items):
            return True
        # Durable (or nothing to store): only now may the broker forget the messages.
        self._ack(items)
        if self.watermarks is not None:
            now = self.clock()
            for outcome in outcomes:
                if outcome is not None and outcome.device is not None:
                    self.watermarks.stored(
                        outcome.device,
                        outcome.readings,
                        now=now,
                        unconfirmed_from=outcome.unconfirmed_from,
                    )
            self._publish_watermarks()
        return True

    def _write(self, points: Sequence[Point], items: Sequence[_Queued]) -> bool:
        """Write until the sink takes the points; False if the service stopped first."""
        while True:
            try:
                self.sink.write(points)
            except SinkError as exc:
                with self._stats_lock:
                    self._write_errors += 1
                if self._stop.is_set():
                    unacked = sum(1 for item in items if item.message.needs_ack)
                    with self._stats_lock:
                        self._deferred += unacked
                        if unacked < len(items):
                            self._lost += len(points)
                    if unacked == len(items):
                        log.warning(
                            "stopping with %d message(s) unwritten and unacknowledged "
                            "(the broker re-sends them): %s",
                            unacked,
                            exc,
                        )
                    else:
                        self._reject(
                            IngestReject.SINK_REFUSED, f"{len(points)} point(s) lost: {exc}"
                        )
                    return False
                # The sink refuses only when its durable buffer is full: wait, and let the
                # bounded queue push back on the broker meanwhile.
                log.warning("sink refused %d point(s), retrying: %s", len(points), exc)
                self._stop.wait(self.sink_retry_s)
                continue
            with self._stats_lock:
                self._written += len(points)
            return True

    def _ack(self, items: Sequence[_Queued]) -> None:
        acked = 0
        for item in items:
            message = item.message
            if not message.needs_ack:
                continue
            try:
                self.transport.ack(message)
            except FedgeError as exc:  # the broker re-sends what was not acknowledged
                log.warning("could not acknowledge %s: %s", message.topic, exc)
                continue
            acked += 1
        if acked:
            with self._stats_lock:
                self._acked += acked

    def _publish_watermarks(self) -> None:
        marks = self.watermarks
        if marks is None:
            return
        now = self.clock()
        if now - self._last_stored_publish < self.stored_ack_interval_s:
            return
        self._last_stored_publish = now
        marks.expire(now=now)
        published = 0
        for device, mark in marks.take_changed().items():
            ack = StoredAck(
                fleet=self.fleet,
                device=device,
                through_seq=mark.through_seq,  # >= 0: take_changed keeps no other
                through_ts=mark.through_ts,
                ts=now,
            )
            try:
                self.transport.publish(
                    self.topics.stored(device), encode_message(ack), qos=1, retain=True
                )
            except (FedgeError, ValueError) as exc:
                # The next movement of this device's watermark publishes it again.
                log.warning("stored-up-to for %s not published: %s", device, exc)
                continue
            published += 1
        if published:
            with self._stats_lock:
                self._stored_published += published

    def _seed_watermark(self, message: InboundMessage) -> bool:
        """Our own retained watermark coming back: seed from it. False if not one."""
        if self.watermarks is None or not message.topic.endswith("/stored"):
            return False
        try:
            ack = decode_message(StoredAck, message.payload)
        except MessageError as exc:
            self._reject(IngestReject.INVALID_SCHEMA, f"{message.topic}: {exc}")
            return True
        if message.topic == self.topics.stored(ack.device) and ack.fleet == self.fleet:
            self.watermarks.seed(ack.device, Watermark(ack.through_seq, ack.through_ts))
        with self._stats_lock:
            self._ignored += 1
        return True

    def _process(self, item: _Queued) -> Accepted | None:
        topic = item.message.topic
        try:
            if self._seed_watermark(item.message):
                return None
            outcome = self.rules.convert(topic, item.message.payload, received_at=item.received_at)
        except IngestRejectedError as rej:
            self._reject(rej.reason, rej.detail)
            return None
        except Exception:  # one bad message must never stop ingestion
            log.exception("unexpected error ingesting %s", topic)
            self._reject(IngestReject.INTERNAL, f"unexpected error on {topic}")
            return None
        if not isinstance(outcome, Accepted):
            with self._stats_lock:
                self._ignored += 1
            return None
        with self._stats_lock:
            self._accepted += 1
            self._duplicates += outcome.duplicates
            if outcome.future_readings:
                self._rejected_readings[IngestReject.FUTURE_TIMESTAMP] += outcome.future_readings
        if outcome.future_readings:
            log.warning("%s: dropped %d reading(s) from the future", topic, outcome.future_readings)
        return outcome

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
                acked=self._acked,
                deferred=self._deferred,
                stored_acks_published=self._stored_published,
            )
