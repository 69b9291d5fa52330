"""Telemetry ingestion: MQTT messages of one fleet → validated, de-duplicated points → a sink.

The I/O loop around the pure rules of :mod:`fedge.ingest_rules` (which checks what,
in which order, and how de-duplication works is documented there). The transport
callback (:meth:`IngestService.handle`) only timestamps the message and puts it on
a bounded queue; a worker thread drains the queue, hands each message to
:class:`~fedge.ingest_rules.IngestRules` and writes the points of a whole drain to
the sink in one call, retrying while the sink refuses.

Every message that is not written is counted by reason (:class:`IngestReject`) and
logged; a bad message never stops the service.
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
from fedge.errors import FedgeError, IngestReject, IngestRejectedError, SinkError
from fedge.ingest_rules import Accepted, IngestRules
from fedge.messages import MAX_MESSAGE_BYTES
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


_LOG_FIRST = 10
_LOG_EVERY = 1000


class IngestService:
    """Subscribes to one fleet's telemetry, predictions, status, maintenance events and
    round summaries.

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
        authenticator: Authenticator | None = None,
        replay_guard: ReplayGuard | None = None,
    ) -> None:
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
        )
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
            self.topics.all_events,
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
        topic = item.message.topic
        try:
            outcome = self.rules.convert(topic, item.message.payload, received_at=item.received_at)
        except IngestRejectedError as rej:
            self._reject(rej.reason, rej.detail)
            return []
        except Exception:  # one bad message must never stop ingestion
            log.exception("unexpected error ingesting %s", topic)
            self._reject(IngestReject.INTERNAL, f"unexpected error on {topic}")
            return []
        if not isinstance(outcome, Accepted):
            with self._stats_lock:
                self._ignored += 1
            return []
        with self._stats_lock:
            self._accepted += 1
            self._duplicates += outcome.duplicates
            if outcome.future_readings:
                self._rejected_readings[IngestReject.FUTURE_TIMESTAMP] += outcome.future_readings
        if outcome.future_readings:
            log.warning("%s: dropped %d reading(s) from the future", topic, outcome.future_readings)
        return outcome.points

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
