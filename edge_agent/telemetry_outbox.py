"""The agent's telemetry outbox: stored readings out in QoS 1 batches, until confirmed.

:class:`TelemetryOutbox` publishes the store's unsent readings in batches (at most
:data:`MAX_INFLIGHT_BATCHES` unacknowledged at a time), marks them sent when the
broker acknowledges a batch, and, with ingest's stored-up-to acks
(:mod:`edge_agent.telemetry_confirm`), keeps them unconfirmed until an ack covers
them and sends them again after a reconnect or a timeout. Every batch says which
readings the device still owes ingest (``unconfirmed_from_seq``).

It reads and writes the store, whose SQLite connection belongs to the agent's
thread: one outbox per agent, used from that thread only. Failures of the store or
the transport are kept in ``stats.last_error`` and retried at the next flush; none
is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from edge_agent.agent_stats import AgentStats
from edge_agent.store import ReadingStore
from edge_agent.telemetry_confirm import TelemetryConfirm
from fedge.config import AgentConfig
from fedge.errors import StorageError, TransportError
from fedge.messages import Reading, StoredAck, TelemetryBatch, encode_message
from fedge.topics import Topics
from fedge.transport import PublishHandle, Transport

__all__ = ["MAX_INFLIGHT_BATCHES", "TelemetryOutbox"]

log = logging.getLogger(__name__)

MAX_INFLIGHT_BATCHES = 20
"""Telemetry batches published and not yet acknowledged by the broker, at most."""

Publish = Callable[[str, bytes], PublishHandle]


class TelemetryOutbox:
    """One device's telemetry on its way to ingest (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        store: ReadingStore,
        confirm: TelemetryConfirm,
        transport: Transport,
        publish: Publish,
        sensor_names: Sequence[str],
        stats: AgentStats,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.confirm = confirm
        self.transport = transport
        self.publish = publish
        """Publishes one message (QoS 1), signed if the agent signs."""
        self.sensor_names = tuple(sensor_names)
        self.stats = stats
        self.clock = clock
        self.topic = Topics(config.fleet).telemetry(config.device)
        self._inflight: list[tuple[PublishHandle, list[int]]] = []

    def flush(self, now: float) -> int:
        """Publish unsent readings in batches (QoS 1); returns how many were queued."""
        queued = 0
        names = self.sensor_names
        inflight = {s for _, seqs in self._inflight for s in seqs}
        while len(self._inflight) < MAX_INFLIGHT_BATCHES:
            rows = [
                r
                for r in self.store.unsent(self.config.telemetry_batch + len(inflight))
                if r.seq not in inflight
            ][: self.config.telemetry_batch]
            if not rows:
                break
            try:
                # What ingest may start or move its watermark to (issue 12): read per
                # batch, after its rows, so the batch is among the readings owed.
                owed = self.store.unconfirmed_from()
            except StorageError as exc:
                self.stats.last_error = str(exc)
                break
            batch = TelemetryBatch(
                fleet=self.config.fleet,
                device=self.config.device,
                site=self.config.site,
                unconfirmed_from_seq=None if owed is None else owed[0],
                unconfirmed_from_ts=None if owed is None else owed[1],
                readings=[
                    Reading(
                        seq=r.seq,
                        ts=r.ts,
                        cycle=r.cycle,
                        values={n: float(v) for n, v in zip(names, r.values, strict=True)},
                    )
                    for r in rows
                ],
            )
            try:
                handle = self.publish(self.topic, encode_message(batch))
            except TransportError as exc:
                self.stats.last_error = str(exc)
                break
            seqs = [r.seq for r in rows]
            self._inflight.append((handle, seqs))
            inflight.update(seqs)
            self.stats.telemetry_batches += 1
            queued += len(rows)
        return queued

    def on_stored_ack(self, ack: StoredAck) -> None:
        """Apply a stored-up-to ack (refusals raise RefusedError, counted by the agent)."""
        mark = self.confirm.on_ack(ack, now=self.clock())
        if mark is not None:
            self.stats.stored_acks += 1
            self.store.confirm_stored(mark.through_seq, mark.through_ts)

    def watch_connection(self) -> None:
        """Tell the confirmation state about a new connection (the transport's counter)."""
        confirm = self.confirm
        reconnects = self.transport.reconnects
        if confirm.subscribes and confirm.new_connection(reconnects):
            # PUBACKs of the old connection may have come after the last flush: take
            # them first, they belong to what a dead broker may have lost.
            self.collect_acks(wait=0.0)
            try:
                newest = self.store.newest_unconfirmed()
            except StorageError as exc:
                self.stats.last_error = str(exc)
                return  # noticed again at the next step
            confirm.on_connection(reconnects, now=self.clock(), sent_through=newest)
            log.debug("%s: connection %d, unconfirmed through seq %s", self.config.device,
                      reconnects, newest)

    def resend_if_due(self, now: float) -> None:
        """Confirm mode: after a (re)connect or a timeout, send the unconfirmed again."""
        confirm = self.confirm
        if not confirm.active:
            return
        try:
            order = confirm.tick(now=now, unconfirmed=self.store.unconfirmed_count())
            if order is None:
                return
            resent = self.store.resend_unconfirmed(through_seq=order.through_seq)
        except StorageError as exc:
            self.stats.last_error = str(exc)
            return
        self.stats.telemetry_resent += resent
        log.info(
            "%s: re-sending %d reading(s) ingest has not confirmed (%s)",
            self.config.device,
            resent,
            order.reason.value,
        )

    def collect_acks(self, *, wait: float) -> None:
        """Mark the batches the broker acknowledged as sent, waiting up to ``wait`` s."""
        deadline = time.monotonic() + wait
        done: list[int] = []
        still: list[tuple[PublishHandle, list[int]]] = []
        for handle, seqs in self._inflight:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                delivered = handle.wait(remaining) if remaining > 0 else handle.delivered
            except TransportError as exc:
                self.stats.last_error = str(exc)
                delivered = False  # re-sent from the store on the next flush
                seqs = []
            if delivered:
                done.extend(seqs)
                self.stats.telemetry_acked += 1
            elif seqs:
                still.append((handle, seqs))
        self._inflight = still
        if done:
            try:
                # Without confirmations (mode off) the PUBACK is all there will be.
                self.store.mark_sent(done, confirmed=not self.confirm.subscribes)
                mark = self.confirm.watermark
                if self.confirm.active and mark is not None:
                    # Re-sent readings the last ack covers already: stored again.
                    self.store.confirm_stored(mark.through_seq, mark.through_ts)
            except StorageError as exc:
                self.stats.last_error = str(exc)
