"""The aggregator process: a transport, a :class:`RoundCoordinator`, checkpoints, journals.

Inbound messages are queued by the transport callback and handled on the
service thread; the coordinator decides (and verifies what devices sent, with the
``authenticator``), the service carries out its effects in order, signing every
publish (global models, announcements, summaries) with the aggregator key at
publish time.

Durability comes first: a reply's journal record is fsynced before any later
effect other than another reply's record runs, and before :meth:`step` returns
(so, with manual MQTT acknowledgements, before the reply is acknowledged): the
replies one step drains share one fsync (group commit; each reply used to cost its
own, 0.6-2 ms on the test machine, serially on this thread). A round's journal
close and checkpoint are on disk before its model is published. A failing disk
write is logged and counted and does not stop the round's other effects; a failed
checkpoint save is retried when the next round closes.

At start the checkpoint directory is probed (an unusable one is a
:class:`~aggregator.checkpoint.CheckpointDirectoryError`, before anything is
announced), and the coordinator is restored from the checkpoint and the journals
(:func:`~aggregator.recovery.restore_coordinator`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aggregator.checkpoint import CheckpointStore
from aggregator.coordinator import RoundCoordinator
from aggregator.effects import (
    Effect,
    JournalClose,
    JournalOpen,
    JournalUpdate,
    Publish,
    RoundClosed,
    SaveCheckpoint,
)
from aggregator.journal import JournalStore, close_record, open_record, update_record
from aggregator.recovery import Recovery, restore_coordinator
from aggregator.state import Checkpoint
from fedge.config import AggregatorConfig
from fedge.errors import FedgeError, StorageError, TransportError
from fedge.messages import RoundSummary
from fedge.models import build_model, state_tensors, trainable_names
from fedge.signing import Authenticator, Signer, StatusStamps
from fedge.strategies import Strategy
from fedge.topics import Topics
from fedge.transport import InboundMessage, Transport, drain

__all__ = ["AggregatorService", "ServiceStats"]

log = logging.getLogger(__name__)


@dataclass
class ServiceStats:
    """Disk trouble the service survived, for the operator (and the tests)."""

    save_failures: int = 0
    journal_failures: int = 0
    recovery: Recovery = field(default_factory=Recovery)


class AggregatorService:
    """Runs the fleet's rounds over ``transport`` until the configured rounds are done."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        transport: Transport,
        checkpoints: CheckpointStore | None = None,
        journal: JournalStore | None = None,
        on_round: Callable[[RoundSummary], None] | None = None,
        clock: Callable[[], float] = time.time,
        authenticator: Authenticator | None = None,
        signer: Signer | None = None,
        status_stamps: StatusStamps | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator or Authenticator("off")
        self.signer = signer or Signer()
        self._status_stamps = status_stamps
        self.transport = transport
        self.checkpoints = checkpoints or CheckpointStore(config.checkpoint_dir)
        self.checkpoints.probe()  # fail fast: nothing announced that could not be kept
        self.journal = journal or JournalStore(self.checkpoints.directory)
        self.on_round = on_round
        self.clock = clock
        self.topics = Topics(config.fleet)
        self.stats = ServiceStats()
        self._inbox: queue.Queue[InboundMessage] = queue.Queue()
        self._pending_save: Checkpoint | None = None
        self._unsaved: set[int] = set()  # completed rounds no saved checkpoint covers yet
        self._checkpoint_round = -1
        self.coordinator = self._make_coordinator()

    def _make_coordinator(self) -> RoundCoordinator:
        model = build_model(self.config.model, seed=self.config.seed)
        initial = self.checkpoints.load_latest()
        if initial is None:
            initial = Checkpoint(
                fleet=self.config.fleet,
                version=0,
                round_id=-1,
                spec=self.config.model,
                tensors=state_tensors(model),
                stats_done=False,
            )
        else:
            log.info(
                "resuming from checkpoint: version %d, round %d", initial.version, initial.round_id
            )
            if initial.spec != self.config.model:
                log.warning("checkpoint model spec differs from config; using the checkpoint's")
                model = build_model(initial.spec)
        coordinator, recovery = restore_coordinator(
            self.config,
            strategy=Strategy.from_settings(self.config),
            checkpoint=initial,
            journals=self.journal.load(),
            trainable=trainable_names(model),
            authenticator=self.authenticator,
            status_stamps=self._status_stamps,
        )
        self.stats.recovery = recovery
        self._checkpoint_round = initial.round_id
        self._unsaved = set(recovery.replayed)
        if recovery.replayed:
            log.warning("rounds %s replayed from their journals", recovery.replayed)
        if recovery.skipped:
            log.warning("journal records ignored, by reason: %s", dict(recovery.skipped))
        if recovery.resumed is not None:
            log.warning("round %d resumed from its journal", recovery.resumed)
            try:
                self.journal.reattach(recovery.resumed)
            except StorageError as exc:
                self._journal_failed(exc)
        return coordinator

    @property
    def history(self) -> list[RoundSummary]:
        """The newest round summaries (at most ``config.history_limit``)."""
        return list(self.coordinator.history)

    def _execute(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if not isinstance(effect, JournalUpdate):
                self._sync_journal()  # what follows may depend on the replies before it
            if isinstance(effect, Publish):
                payload = self.signer.sign(effect.topic, effect.payload, now=self.clock())
                self.transport.publish(effect.topic, payload, qos=effect.qos, retain=effect.retain)
            elif isinstance(effect, JournalUpdate):
                self._journal_write(
                    effect.round_id, update_record(effect.topic, effect.payload), sync=False
                )
            elif isinstance(effect, JournalClose):
                self._on_journal_close(effect)
            elif isinstance(effect, JournalOpen):
                self._on_journal_open(effect)
            elif isinstance(effect, SaveCheckpoint):
                self._save(effect.checkpoint)
            elif isinstance(effect, RoundClosed) and self.on_round is not None:
                try:
                    self.on_round(effect.summary)
                except Exception:
                    log.exception("on_round callback failed")

    # Durable effects: each failure is logged and counted, and the round goes on -----------
    def _journal_failed(self, exc: StorageError) -> None:
        self.stats.journal_failures += 1
        log.error("journal write failed (a crash now would lose this round's state): %s", exc)

    def _journal_write(self, round_id: int, record: bytes, *, sync: bool = True) -> None:
        try:
            self.journal.append(round_id, record, sync=sync)
        except StorageError as exc:
            self._journal_failed(exc)

    def _sync_journal(self) -> None:
        """fsync the reply records written since the last sync (one fsync for them all)."""
        if not self.journal.unsynced:
            return
        try:
            self.journal.sync()
        except StorageError as exc:
            self._journal_failed(exc)

    def _on_journal_close(self, effect: JournalClose) -> None:
        pending = self._pending_save
        if pending is not None and effect.round_id > pending.round_id:
            log.info("retrying the checkpoint of round %d", pending.round_id)
            self._save(pending)
        self._journal_write(effect.round_id, close_record(effect.outcome, effect.ts))
        if effect.outcome == "completed":
            self._unsaved.add(effect.round_id)  # until a saved checkpoint covers it

    def _on_journal_open(self, effect: JournalOpen) -> None:
        try:
            self.journal.open_round(
                effect.round_id, open_record(effect.announcement, effect.expected)
            )
            # Older journals are dead weight unless they hold a round no saved checkpoint
            # has yet; the new one carries the highest round id.
            self.journal.delete(
                r
                for r in self.journal.round_ids()
                if r < effect.round_id and r not in self._unsaved
            )
        except StorageError as exc:
            self._journal_failed(exc)

    def _save(self, checkpoint: Checkpoint) -> None:
        try:
            self.checkpoints.save(checkpoint)
        except StorageError as exc:
            self.stats.save_failures += 1
            if self._pending_save is None or checkpoint.round_id >= self._pending_save.round_id:
                self._pending_save = checkpoint
            log.error(
                "checkpoint of round %d not saved (retried next round): %s",
                checkpoint.round_id,
                exc,
            )
            return
        self._pending_save = None
        self._unsaved = {r for r in self._unsaved if r > checkpoint.round_id}
        try:
            self.journal.prune(up_to=checkpoint.round_id)
        except StorageError as exc:
            self._journal_failed(exc)

    # Lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe, connect, publish the current global model (and a resumed round).

        ``rounds/current`` is subscribed first, so its retained announcement (the
        fleet's newest round) comes before the retained statuses. Replies and statuses
        queued in the session while the aggregator was down may come even earlier:
        the coordinator re-announces a round it opened under an id the broker's
        announcement shows taken (:meth:`RoundCoordinator.on_announcement`).
        """
        try:
            self.journal.prune(up_to=self._checkpoint_round)  # left by a crash after a save
        except StorageError as exc:
            self._journal_failed(exc)
        # Subscribed before connecting: the persistent session hands over the replies
        # queued while this aggregator was down right after CONNACK, and a transport
        # drops (and acknowledges) a message on a topic it is not subscribed to.
        self.transport.subscribe(self.topics.round_current)
        self.transport.subscribe(self.topics.all_status)
        self.transport.subscribe(self.topics.all_updates)
        self.transport.subscribe(self.topics.all_update_chunks)
        self.transport.connect(on_message=self._inbox.put)
        self._execute(self.coordinator.start(self.clock()))

    def step(self, *, timeout: float = 0.1) -> None:
        """Handle queued messages (waiting up to ``timeout``) and advance the clock."""
        try:
            for msg in drain(self._inbox, timeout=timeout):
                try:
                    # With manual MQTT acknowledgements, ``msg`` is acknowledged only
                    # after this returns: after its journal record is on disk.
                    self._execute(self.coordinator.handle(msg.topic, msg.payload, self.clock()))
                except TransportError:
                    raise
                except FedgeError as exc:  # one bad message never stops the aggregator
                    log.warning("error handling %s: %s", msg.topic, exc)
            self._execute(self.coordinator.tick(self.clock()))
        finally:
            self._sync_journal()  # the replies of this step, with one fsync

    def run(
        self, *, stop: threading.Event | None = None, timeout: float | None = None
    ) -> list[RoundSummary]:
        """Run until all rounds are done, ``stop`` is set, or ``timeout`` seconds pass."""
        stop = stop or threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        try:
            while not stop.is_set() and not self.coordinator.finished:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"aggregator did not finish within {timeout}s")
                self.step(timeout=0.05)
        finally:
            self.close()
        return self.history

    def close(self) -> None:
        """Disconnect and close the journal (everything in it is already on disk)."""
        try:
            self.transport.close()
        finally:
            self.journal.close()
