"""The edge agent: sample, store, forward telemetry, train locally, predict.

The agent owns one thread (``run``). The transport's callbacks only put inbound
messages on a queue; everything else happens on the agent thread, so paho's network
loop is never blocked, except local training: with ``background_training`` it runs
on a worker thread of lower CPU priority (:mod:`edge_agent.job_worker`), on copies
of what it needs, and hands its frame back to the agent thread to publish. What a
model reads from the store (features, windows, statistics) is
:class:`~edge_agent.device_data.DeviceData`.

Inbound, nothing is trusted: in security mode ``verify`` every global model and
round announcement must be signed by the pinned aggregator key; announcements are
clamped to the agent's own limits (:mod:`fedge.limits`); a global model replaces the
running one only if it passes :class:`~edge_agent.model_gate.ModelGate`. Whatever a
message does wrong is counted per reason (``AgentStats.refused``), logged for the
first few and every 1000th of a reason, and never ends the agent thread. Outbound,
with a signing key, everything the agent publishes is signed at publish time
(the last will at connect time).

Telemetry (:class:`~edge_agent.telemetry_outbox.TelemetryOutbox`): readings go out
in QoS 1 batches from the store; with ingest's
stored-up-to acks (``telemetry_confirm``, :mod:`edge_agent.telemetry_confirm`) a
reading the broker acknowledged is kept as unconfirmed until an ack covers it, and
the unconfirmed ones are sent again after a reconnect or a timeout. Every batch
says which readings the agent still owes ingest (``unconfirmed_from_seq``), so an
ingest without a watermark for it starts there, not at the first reading it sees.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import resource
import threading
import time
from collections.abc import Callable

import numpy as np
import tenacity

from edge_agent.agent_stats import AgentStats
from edge_agent.device_data import DeviceData
from edge_agent.job_worker import JobWorker
from edge_agent.maintenance import Maintenance
from edge_agent.model_gate import ModelGate
from edge_agent.sources import SensorSource
from edge_agent.store import ReadingStore
from edge_agent.telemetry_confirm import TelemetryConfirm, Watermark
from edge_agent.telemetry_outbox import TelemetryOutbox
from edge_agent.train_job import LocalTrainer
from fedge import __version__
from fedge.chunking import split_frame
from fedge.codec import Frame, FrameHeader, decode_frame, encode_frame
from fedge.config import AgentConfig
from fedge.errors import (
    FeatureSchemaError,
    FedgeError,
    FrameError,
    MessageError,
    ProtocolError,
    RefusalReason,
    RefusedError,
    RejectReason,
    StorageError,
    TransportError,
)
from fedge.limits import AdmittedRound, check_announcement
from fedge.messages import (
    DeviceStatus,
    Prediction,
    RoundAnnouncement,
    StoredAck,
    decode_message,
    encode_message,
)
from fedge.models import FaultModel, build_model, load_tensors
from fedge.signing import Authenticator, Signer
from fedge.spec import ModelSpec
from fedge.tally import RejectionTally
from fedge.topics import Topics
from fedge.training import (
    TrainingStopped,
    WindowDataset,
    evaluate,
    predict,
    set_torch_threads,
)
from fedge.transport import InboundMessage, PublishHandle, Transport, Will, drain

__all__ = ["AgentStats", "EdgeAgent", "cpu_load_percent"]

log = logging.getLogger(__name__)

# A background training job: its round, its thread, and the box its frame (or error) lands in.
_TrainJob = tuple[RoundAnnouncement, threading.Thread, list[bytes | BaseException]]

# Not a rejection: the retained model again after a reconnect, or a round already done;
# a stale retained stored-up-to ack (a broker back from an older snapshot). Counted in
# AgentStats.refused all the same.
_BENIGN = frozenset(
    {RefusalReason.VERSION_REPEAT.value, RefusalReason.STORED_ACK_BACKWARDS.value}
)
_INTERNAL = "internal_error"
# Put on the inbox by a finished training job (to publish the update at once) and when
# the agent is asked to stop, so the agent thread never has to poll for either.
# _handle ignores it.
_WAKE = InboundMessage(topic="", payload=b"")

# How long the agent thread sleeps on its inbox with nothing due: short while a round is
# pending (a postponed or waiting round is retried every step), long otherwise. Every
# timed wake-up costs CPU (~0.1 ms measured on the benchmark machine's VM, ~3 ms a
# second an agent at the 50 ms it always used: 30% of a core for 100 simulated agents,
# benchmarks/round.py); events written by `fedge agent event` wait at most the long one.
_BUSY_WAIT_S = 0.05
_IDLE_WAIT_S = 1.0

# Without max_train_seconds, a busy device declines a round this close to its deadline.
_BUSY_MARGIN_S = 30.0


def _wake_on(stop: threading.Event, inbox: queue.Queue[InboundMessage]) -> None:
    """Put :data:`_WAKE` on ``inbox`` once ``stop`` is set."""
    stop.wait()
    inbox.put(_WAKE)


def cpu_load_percent() -> float:
    """The 1-minute load average per usable core, in percent (100 = every core busy)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 100.0 * os.getloadavg()[0] / max(1, cores or 1)


class EdgeAgent:
    """One device of the fleet. Give it a transport, a sensor source and a store."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport,
        source: SensorSource,
        store: ReadingStore,
        history_units: int = 0,
        clock: Callable[[], float] = time.time,
        authenticator: Authenticator | None = None,
        signer: Signer | None = None,
        load_percent: Callable[[], float] = cpu_load_percent,
    ) -> None:
        self.config = config
        self.transport = transport
        self.source = source
        self.store = store
        self.clock = clock
        # Mode "off" by default: the demo and simulations verify and sign nothing.
        self.authenticator = authenticator or Authenticator("off")
        self.signer = signer or Signer()
        self.gate = ModelGate(
            limits=config.limits,
            margin=config.model_acceptance_margin,
            authenticated=self.authenticator.mode == "verify",
        )
        self.load_percent = load_percent
        if config.torch_threads is not None:
            set_torch_threads(config.torch_threads)
        self.topics = Topics(config.fleet)
        self.stats = AgentStats()
        kept = store.stored_watermark()
        self.confirm = TelemetryConfirm(
            fleet=config.fleet,
            device=config.device,
            mode=config.telemetry_confirm,
            timeout_s=config.telemetry_confirm_timeout_s,
            watermark=None if kept is None else Watermark(*kept),
        )
        self.outbox = TelemetryOutbox(
            config, store=store, confirm=self.confirm, transport=transport,
            publish=self._publish, sensor_names=source.sensor_names, stats=self.stats,
            clock=clock,
        )
        self.model: FaultModel | None = None
        self.model_version: int | None = None
        self.refused_version: int | None = None
        self.refused_reason: str | None = None
        self._tally = RejectionTally()
        self._inbox: queue.Queue[InboundMessage] = queue.Queue()
        self._pending_round: AdmittedRound | None = None
        self._answered: set[int] = set()
        # Set when the agent must stop: local training checks it between mini-batches.
        self._halt = threading.Event()
        self._job: (
            tuple[RoundAnnouncement, threading.Thread, list[bytes | BaseException]] | None
        ) = None
        self._worker = JobWorker(f"{config.device}-train", nice=config.training_nice)
        # Runs on the agent thread once the round's update is published: saves the new
        # error-feedback residual (the store belongs to this thread, not the trainer's).
        self._commit: tuple[int, Callable[[], None]] | None = None
        self._postponed: int | None = None
        # The previous running model: the next global model is loaded into it to be
        # vetted (ModelGate.vet's ``spare``) rather than into a newly built one.
        self._spare: FaultModel | None = None
        self._current_unit: int | None = None
        self._current_cycle: int | None = None
        self._history_units = history_units
        self._next_sample = 0.0
        self._next_flush = 0.0
        self._next_status = 0.0
        self._cpu_mark = (time.monotonic(), self._cpu_seconds())
        self._snapshot: tuple[str | None, int | None] | None = None
        # Events, lives, labels and the health score (edge_agent/maintenance.py).
        self.maintenance = Maintenance(
            config, store=store, sensor_names=source.sensor_names, transport=transport, clock=clock
        )
        # Features, windows and statistics from the store (edge_agent/device_data.py).
        self.data = DeviceData(
            config, store=store, maintenance=self.maintenance, sensor_names=source.sensor_names
        )
        self.trainer = LocalTrainer(
            seed=config.seed, device=config.device, max_train_seconds=config.max_train_seconds
        )

    @staticmethod
    def _cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _health(self) -> tuple[float | None, float]:
        """Process CPU % since the last status and peak resident memory in MB."""
        wall0, cpu0 = self._cpu_mark
        wall, cpu = time.monotonic(), self._cpu_seconds()
        self._cpu_mark = (wall, cpu)
        cpu_percent = 100.0 * (cpu - cpu0) / (wall - wall0) if wall > wall0 else None
        # ru_maxrss is in KiB on Linux.
        return cpu_percent, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    # Lifecycle ------------------------------------------------------------------------------
    def _status(self, state: str) -> bytes:
        cpu_percent, memory_mb = self._health()
        source = self.source.health()
        mark = self.confirm.watermark
        last_error = self.stats.last_error
        if source.state in ("reconnecting", "down") and source.last_error:
            # An unreachable sensor is what the operator needs to see first.
            last_error = f"source {source.state}: {source.last_error}"
        return encode_message(
            DeviceStatus(
                fleet=self.config.fleet,
                device=self.config.device,
                state="online" if state == "online" else "offline",
                ts=self.clock(),
                site=self.config.site,
                agent_version=__version__,
                model_version=self.model_version,
                buffer_depth=self.store.unsent_count(),
                buffer_unconfirmed=self.store.unconfirmed_count() if self.confirm.active else None,
                confirmed_through_seq=None if mark is None else max(0, mark.through_seq),
                cpu_percent=None if cpu_percent is None else max(0.0, cpu_percent),
                memory_mb=memory_mb,
                last_error=None if last_error is None else last_error[:300],
                source_state=source.state,
                refused_model_version=self.refused_version,
                refused_reason=self.refused_reason,
            )
        )

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> PublishHandle:
        """Publish ``payload``, signed for ``topic`` now if the agent has a signing key."""
        return self.transport.publish(
            topic, self.signer.sign(topic, payload, now=self.clock()), retain=retain
        )

    def start(self) -> None:
        """Backfill history if the store is new, start the source, connect, announce online."""
        self._backfill()
        self._restore_model()
        self.source.start()
        self._connect()

    def _restore_model(self) -> None:
        """Load the model this device ran before a restart (saved in its store).

        It is the floor for what comes next (never a lower version) and the model the
        next global model is compared with on held-out data.
        """
        if self.model is not None:
            return
        saved = self.store.load_model()
        if saved is None:
            return
        version, payload = saved
        try:
            frame = decode_frame(payload, max_bytes=max(len(payload), 1024))
            spec = frame.header.model
            if spec is None:
                raise FrameError("saved model frame carries no model spec")
            model = build_model(spec)
            load_tensors(model, frame.tensors)
        except FedgeError as exc:
            # The version floor in the store's meta table still holds.
            log.warning("%s: cannot restore saved model v%d: %s", self.config.device, version, exc)
            return
        self.model, self.model_version = model, version
        log.info("%s: restored global model v%d from the store", self.config.device, version)

    def _backfill(self) -> None:
        if self._history_units and not self.maintenance.has_lives():
            # In the order of the recorded units: lives are numbered (and so trained on
            # and held out) in that order, as units were before lives existed.
            runs = sorted(self.source.history(self._history_units), key=lambda run: run.unit)
            self.maintenance.backfill(runs, self.clock())

    def _connect(self) -> None:
        offline = DeviceStatus(fleet=self.config.fleet, device=self.config.device, state="offline")
        topic = self.topics.status(self.config.device)
        # Signed now: the broker publishes the will later, when the agent is gone.
        will = self.signer.sign(topic, encode_message(offline), now=self.clock())
        # Subscribed before connecting: what the persistent session queued while the
        # agent was away (operator events) comes right after CONNACK, and a transport
        # drops a message on a topic it is not subscribed to.
        self.transport.subscribe(self.topics.global_model)
        self.transport.subscribe(self.topics.round_current)
        if self.authenticator.mode == "off":
            # Operator events over MQTT (unsigned fleets only: in verify mode events come
            # through the agent's store, `fedge agent event`, which needs no signature).
            self.transport.subscribe(self.topics.events(self.config.device))
        if self.confirm.subscribes:
            # Retained: the latest ack arrives right after this, at every (re)connect.
            self.transport.subscribe(self.topics.stored(self.config.device))
        self.transport.connect(on_message=self._inbox.put, will=Will(topic, will, retain=True))
        self._publish(topic, self._status("online"), retain=True)

    def _connect_with_retry(self, stop: threading.Event) -> bool:
        """Connect, retrying with exponential backoff and jitter until ``stop`` is set.

        While it waits the agent keeps sampling into its store (store-and-forward), so
        a broker that is down at boot costs no readings. Returns False if stopped first.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransportError),
            # initial * 2**n plus up to `initial` of jitter, so a fleet that lost its broker
            # does not reconnect in lock-step.
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.config.reconnect_initial_s,
                jitter=self.config.reconnect_initial_s,
                max=self.config.reconnect_max_s,
            ),
            stop=tenacity.stop_when_event_set(stop),
            sleep=lambda seconds: self._sample_offline(seconds, stop),
            before_sleep=self._log_connect_retry,
            reraise=True,
        )
        try:
            retrying(self._connect)
        except TransportError:
            return False  # stopped while the broker was still unreachable
        if self.stats.connect_failures:
            log.info(
                "%s: connected after %d failed attempt(s)",
                self.config.device,
                self.stats.connect_failures,
            )
        return True

    def _log_connect_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.connect_failures += 1
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        self.stats.last_error = f"broker unreachable: {error}"
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: broker unreachable (attempt %d): %s; retrying in %.1fs",
            self.config.device,
            state.attempt_number,
            error,
            wait,
        )

    def _sample_offline(self, seconds: float, stop: threading.Event) -> None:
        """Keep sampling into the store for ``seconds`` (or until ``stop``), no network."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            now = self.clock()
            if self.config.sample_interval_s > 0 and now >= self._next_sample:
                self._next_sample = now + self.config.sample_interval_s
                self._sample(now)
            pause = self.config.sample_interval_s if self.config.sample_interval_s > 0 else 0.05
            stop.wait(min(pause, 0.05, max(0.0, deadline - time.monotonic())))

    def _snapshot_status(self) -> None:
        """Keep the last error and model version in the store (``fedge agent status`` reads
        them without a broker); written only when they change, to spare SD cards."""
        snapshot = (self.stats.last_error, self.model_version)
        if snapshot == self._snapshot:
            return
        error, version = snapshot
        try:
            self.store.set_meta(
                {
                    "last_error": None if error is None else error[:300],
                    "model_version": None if version is None else str(version),
                }
            )
            self._snapshot = snapshot
        except StorageError as exc:
            log.warning("%s: %s", self.config.device, exc)

    def publish_status(self) -> None:
        """Re-publish the retained online status with fresh health figures."""
        self._snapshot_status()
        try:
            self._publish(
                self.topics.status(self.config.device), self._status("online"), retain=True
            )
        except TransportError as exc:
            self.stats.last_error = str(exc)

    def stop(self) -> None:
        """Stop training, publish offline status and disconnect cleanly (within ~2 s)."""
        self._halt.set()
        self._worker.close(timeout=2.0)  # training checks the halt between mini-batches
        self._job = None
        self._snapshot_status()
        try:
            handle = self._publish(
                self.topics.status(self.config.device), self._status("offline"), retain=True
            )
            handle.wait(2.0)
        except TransportError as exc:
            log.warning("%s: could not publish offline status: %s", self.config.device, exc)
        self.maintenance.save()
        self.outbox.collect_acks(wait=2.0)
        self.transport.close()
        self.source.close()

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set: the agent's whole life on one thread (local training
        on a second one when ``background_training``, so sampling keeps its rate)."""
        self._halt = stop
        self._backfill()
        self._restore_model()
        self.source.start()
        if not self._connect_with_retry(stop):
            self._halt.set()
            self.source.close()
            self.transport.close()
            return
        # Wakes the inbox when ``stop`` is set (an untimed wait: no wake-ups until then).
        # ``stop`` is always set by the time run() returns (self.stop() sets it), so the
        # watcher never outlives the agent.
        threading.Thread(
            target=_wake_on, args=(stop, self._inbox), name=f"{self.config.device}-stop",
            daemon=True,
        ).start()
        try:
            while not stop.is_set():
                # Sleep on the inbox until the next sample/flush/status is due.
                due = min(
                    self._next_sample if self.config.sample_interval_s > 0 else math.inf,
                    self._next_flush,
                    self._next_status,
                )
                busy = self._pending_round is not None or self._job is not None
                longest = _BUSY_WAIT_S if busy else _IDLE_WAIT_S
                self.step(timeout=min(longest, max(0.0, due - self.clock())))
        finally:
            self.stop()

    def step(self, *, timeout: float = 0.0) -> None:
        """Do whatever is due: inbound messages, a sample, a telemetry flush, a round.

        Whatever an inbound message sets off (handling it, predicting with the model
        it brought, the round it announced) runs inside :meth:`_contained`: an error
        is logged and counted, and the agent carries on.
        """
        self.outbox.watch_connection()  # before the inbox: the ack after a reconnect is in it
        for msg in drain(self._inbox, timeout=timeout):
            self._contained(self._handle, msg)
        now = self.clock()
        self.maintenance.poll(now)  # events written by `fedge agent event` since the last step
        if self.config.sample_interval_s > 0 and now >= self._next_sample:
            self._next_sample = now + self.config.sample_interval_s
            self._sample(now)
        if now >= self._next_flush:
            self._next_flush = now + self.config.telemetry_interval_s
            self.maintenance.flush()
            self.outbox.collect_acks(wait=0.0)
            self.outbox.resend_if_due(now)
            if self.flush_telemetry(now):
                self._contained(self.predict_and_publish)
        if now >= self._next_status:
            self._next_status = now + self.config.status_interval_s
            self.publish_status()
        self._contained(self._collect_job)
        if self._pending_round is not None:
            self._contained(self._try_round, self._pending_round)

    def _contained(self, work: Callable[..., object], *args: object) -> None:
        """Run ``work``; any Exception is logged, counted as ``internal_error``, dropped.

        KeyboardInterrupt and SystemExit are not Exceptions and still stop the agent.
        """
        try:
            work(*args)
        except Exception as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.stats.rejected_messages += 1
            if self._tally.add(_INTERNAL):
                log.exception("%s: unexpected error (contained)", self.config.device)
            self.stats.refused = self._tally.as_dict()
            if self._pending_round is not None and work == self._try_round:
                # A round that raised once will raise again: do not retry it every step.
                self._answered.add(self._pending_round.announcement.round_id)
                self._pending_round = None

    def _refuse(self, reason: str, topic: str, detail: str) -> None:
        """Count an inbound message refused for ``reason``; log some of them."""
        benign = reason in _BENIGN
        if not benign:
            self.stats.rejected_messages += 1
            self.stats.last_error = f"{reason}: {detail}"[:300]
        if self._tally.add(reason) and not benign:
            log.warning(
                "%s: refused message on %s (%s, #%d): %s",
                self.config.device,
                topic,
                reason,
                self._tally.counts[reason],
                detail,
            )
        self.stats.refused = self._tally.as_dict()

    # Inbound ---------------------------------------------------------------------------------
    def _handle(self, msg: InboundMessage) -> None:
        """Authenticate, decode and act on one inbound message; refusals are counted."""
        try:
            if msg.topic == self.topics.global_model:
                max_bytes = self.config.max_frame_bytes
                self.authenticator.check_frame(msg.payload, msg.topic, max_bytes=max_bytes)
                self._on_global(decode_frame(msg.payload, max_bytes=max_bytes), msg.payload)
            elif msg.topic == self.topics.round_current:
                # No replay guard: the announcement is retained. Rounds already handled
                # are ignored and expired deadlines refused (check_announcement).
                payload = self.authenticator.open_message(msg.payload, msg.topic, now=self.clock())
                self._on_announcement(decode_message(RoundAnnouncement, payload))
            elif msg.topic == self.topics.events(self.config.device):
                self.maintenance.receive(
                    self.authenticator.open_message(msg.payload, msg.topic, now=self.clock())
                )
            elif msg.topic == self.topics.stored(self.config.device):
                # Ingest signs nothing: the broker's ACL vouches for the topic
                # (edge_agent.telemetry_confirm).
                self.outbox.on_stored_ack(decode_message(StoredAck, msg.payload))
        except ProtocolError as exc:
            self._refuse(exc.reason.value, msg.topic, str(exc))
        except RefusedError as exc:
            self._refuse(exc.reason.value, msg.topic, exc.detail)

    def _on_announcement(self, ann: RoundAnnouncement) -> None:
        if ann.fleet != self.config.fleet:
            raise MessageError(f"announcement for fleet {ann.fleet!r}")
        if ann.round_id in self._answered or (
            self._pending_round is not None
            and self._pending_round.announcement.round_id == ann.round_id
        ):
            return  # the retained announcement again
        admitted = check_announcement(ann, self.config.limits, now=self.clock())
        if admitted.adjustments:
            log.info(
                "%s: round %d clamped to the agent's limits: %s",
                self.config.device,
                ann.round_id,
                ", ".join(
                    f"{a.field} {a.requested:g}->{a.applied:g}" for a in admitted.adjustments
                ),
            )
        self._pending_round = admitted

    def _on_global(self, frame: Frame, payload: bytes) -> None:
        header = frame.header
        if header.kind != "global" or header.fleet != self.config.fleet or header.version is None:
            raise FrameError(f"not a global model for fleet {self.config.fleet}")
        if header.model is None:
            raise FrameError("global model frame carries no model spec")
        spec: ModelSpec = header.model
        try:
            self.columns(spec)
        except FeatureSchemaError as exc:
            # Not a bad message: this device cannot serve the fleet's model. Say so in the
            # log and the status; rounds are declined with the reason (see _try_round).
            self.stats.last_error = exc.detail
            log.warning(
                "%s: cannot use global model v%s: %s",
                self.config.device,
                header.version,
                exc.detail,
            )
            return
        floor = self.store.model_floor()
        try:
            vetted = self.gate.vet(
                frame,
                running=self.model,
                running_version=self.model_version,
                floor=floor,
                holdout=self.data.holdout_or_empty,
                probe=self._probe_windows,
                spare=self._spare,
            )
        except RefusedError as exc:
            known = [v for v in (self.model_version, floor) if v is not None]
            if not known or header.version > max(known):
                # A newer model kept out: say so in the status, keep the last good one
                # (one status per new refusal, so a flood of them is not echoed).
                self.stats.models_refused += 1
                refusal = (header.version, exc.reason.value)
                if refusal != (self.refused_version, self.refused_reason):
                    self.refused_version, self.refused_reason = refusal
                    self.publish_status()
            raise
        previous, self.model, self.model_version = self.model, vetted.model, vetted.version
        # The model it replaces holds the next candidate (nothing else refers to it).
        self._spare = previous if previous is not vetted.model else None
        if self.refused_version is not None and self.refused_version <= vetted.version:
            self.refused_version = self.refused_reason = None
        self.stats.models_received += 1
        try:
            self.store.save_model(vetted.version, payload)
        except StorageError as exc:
            self.stats.last_error = str(exc)
        self.predict_and_publish()
        try:
            # Build the training windows now, while idle: a training round on this model
            # follows, and its clock runs from the announcement (cached until units fail).
            self.datasets(spec)
        except FedgeError as exc:  # e.g. a feature without numbers: declined at the round
            self.stats.last_error = str(exc)

    def _probe_windows(self, spec: ModelSpec) -> np.ndarray | None:
        """Stored windows for a smoke forward pass of a model of ``spec``."""
        return self.data.probe_windows(
            spec, limit=self.gate.probe_windows, unit=self._current_unit,
            cycle=self._current_cycle,
        )

    def columns(self, spec: ModelSpec) -> np.ndarray:
        """Column of each of ``spec``'s features among this device's channels.

        Raises FeatureSchemaError naming the features the device lacks.
        """
        return self.data.columns(spec)

    # Sensing and telemetry ----------------------------------------------------------------------
    def _sample(self, now: float) -> None:
        sample = self.source.read()
        if sample is None:
            return
        placed = self.maintenance.place(sample, now)  # into its life; failures become events
        self._current_unit = placed.unit
        self._current_cycle = placed.cycle
        self.stats.readings += 1

    def flush_telemetry(self, now: float) -> int:
        """Publish unsent readings in batches (QoS 1); returns how many were queued."""
        return self.outbox.flush(now)

    # Learning ----------------------------------------------------------------------------------
    def datasets(self, spec: ModelSpec) -> tuple[WindowDataset, WindowDataset]:
        """Training and held-out windows from lives that ended in failure (cached):
        :meth:`DeviceData.datasets <edge_agent.device_data.DeviceData.datasets>`."""
        return self.data.datasets(spec)

    def _try_round(self, admitted: AdmittedRound) -> None:
        ann = admitted.announcement  # clamped to the agent's limits
        if ann.round_id in self._answered or self.clock() > ann.deadline:
            self._pending_round = None
            return
        if ann.selected is not None and self.config.device not in ann.selected:
            return  # a sampled round that did not pick this device
        spec = ann.model or (self.model.spec if self.model is not None else None)
        try:
            if spec is not None:
                self.columns(spec)
        except FeatureSchemaError as exc:
            self._decline(ann, exc.reason, exc.detail)
            return
        if ann.task != "stats" and not self._has_base(ann):
            return  # wait for the round's base model (retained) to arrive
        if self._job is not None:
            return  # one round at a time: answer this one when the current job is done
        if ann.task == "train" and self._too_busy(ann):
            return  # postponed: tried again on the next step
        frame: bytes | None = None
        try:
            if ann.task == "train":
                job = self._train_job(ann, budget_s=admitted.train_budget_s)
                if job is not None and self.config.background_training:
                    self._answered.add(ann.round_id)
                    self._pending_round = None
                    self._start_job(ann, job)
                    return
                frame = None if job is None else job()
            else:
                frame = self._answer(ann)
        except FeatureSchemaError as exc:
            self._decline(ann, exc.reason, exc.detail)
            return
        except TrainingStopped as exc:
            if not self._halt.is_set():
                self._decline(ann, RejectReason.TRAIN_TIMEOUT, str(exc))
                return
        except FedgeError as exc:
            self.stats.last_error = str(exc)
            log.warning("%s: cannot answer round %d: %s", self.config.device, ann.round_id, exc)
            self._answered.add(ann.round_id)
            self._pending_round = None
            return
        if frame is None:  # nothing to answer with (no failed life yet): say so
            detail = f"device {self.config.device} has no data for a {ann.task} round"
            self._decline(ann, RejectReason.NO_DATA, detail)
            return
        self._answered.add(ann.round_id)
        self._pending_round = None
        self._publish_answer(ann, frame)

    def _has_base(self, ann: RoundAnnouncement) -> bool:
        """True if the device runs the round's base model; declines when it never will."""
        running = self.model_version if self.model is not None else None
        if running == ann.base_version:
            return True
        if self.refused_version == ann.base_version:
            self._decline(
                ann,
                RejectReason.MODEL_REFUSED,
                f"refused base model v{ann.base_version} ({self.refused_reason}); runs v{running}",
            )
        elif running is not None and running > ann.base_version:
            # Versions never go back on a device: it cannot train on an older base.
            self._decline(
                ann, RejectReason.STALE_BASE, f"base v{ann.base_version}, runs v{running}"
            )
        return False

    def _too_busy(self, ann: RoundAnnouncement) -> bool:
        """Whether to hold off training ``ann``: the CPU is above ``max_cpu_percent``.

        The round is postponed while its deadline is further than ``max_train_seconds``
        (or 30 s) away, then declined with reason ``busy``.
        """
        limit = self.config.max_cpu_percent
        if limit is None:
            return False
        load = self.load_percent()
        if load <= limit:
            return False
        margin = self.config.max_train_seconds or _BUSY_MARGIN_S
        if ann.deadline - self.clock() > margin:
            if self._postponed != ann.round_id:
                self._postponed = ann.round_id
                log.info("%s: round %d postponed, CPU load %.0f%% > %.0f%%",
                         self.config.device, ann.round_id, load, limit)
            return True
        self._decline(
            ann, RejectReason.BUSY, f"CPU load {load:.0f}% above the device's limit of {limit:.0f}%"
        )
        return True

    def _decline(self, ann: RoundAnnouncement, reason: RejectReason, detail: str) -> None:
        """Tell the aggregator why this device cannot answer ``ann`` (counted in the summary)."""
        self.stats.last_error = detail[:300]
        self.stats.declined_rounds += 1
        self._answered.add(ann.round_id)
        self._pending_round = None
        log.warning("%s: declines round %d: %s", self.config.device, ann.round_id, detail)
        header = self._header(ann, "decline", 0, {}).model_copy(
            update={"reason": reason.value, "detail": detail[:300]}
        )
        try:
            self._publish(
                self.topics.update(ann.round_id, self.config.device), encode_frame(header, {})
            )
        except TransportError as err:
            self.stats.last_error = str(err)

    def _header(
        self, ann: RoundAnnouncement, kind: str, n: int, metrics: dict[str, float]
    ) -> FrameHeader:
        return FrameHeader.model_validate(
            {
                "kind": kind,
                "fleet": self.config.fleet,
                "device": self.config.device,
                "round_id": ann.round_id,
                "base_version": ann.base_version,
                "num_examples": n,
                "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)},
                "created_at": self.clock(),
            }
        )

    def _answer(self, ann: RoundAnnouncement) -> bytes | None:
        if ann.task == "stats":
            # Summarise what the announced model will read (sensors, + age with history).
            spec = ann.model or ModelSpec(
                n_features=len(self.source.sensor_names), context="window"
            )
            summary = self.data.stats_tensors(spec)
            if summary is None:
                return None
            count, tensors = summary
            return encode_frame(self._header(ann, "stats", count, {}), tensors)
        assert self.model is not None  # noqa: S101 - checked by _try_round
        _, holdout = self.datasets(self.model.spec)
        if ann.task == "evaluate":
            ev = evaluate(self.model, holdout)
            if ev.num_examples == 0:
                return None
            metrics = {"rmse": ev.rmse, "mae": ev.mae}
            return encode_frame(self._header(ann, "evaluation", ev.num_examples, metrics), {})
        raise AssertionError(f"unexpected task {ann.task!r}")  # train goes to _train_job

    def _train_job(self, ann: RoundAnnouncement, *, budget_s: float) -> Callable[[], bytes] | None:
        """Everything a train round needs from the store, and a closure that trains
        (:meth:`LocalTrainer.prepare <edge_agent.train_job.LocalTrainer.prepare>`); None
        without training windows. The closure's new error-feedback residual is saved
        once the update is published (``self._commit``)."""
        assert self.model is not None  # noqa: S101 - checked by _try_round
        started = time.monotonic()
        train, holdout = self.datasets(self.model.spec)
        if len(train) == 0:
            return None
        job = self.trainer.prepare(
            self.model, ann, train=train, holdout=holdout, budget_s=budget_s, halt=self._halt,
            started=started, load_residual=self.store.load_residual,
            header_for=lambda n, metrics: self._header(ann, "update", n, metrics),
        )
        key = job.residual_key
        if key is not None:
            new = job.new_residual
            self._commit = (
                ann.round_id, lambda: self.store.save_residual(key, new[0] if new else None)
            )
        return job.run

    def _start_job(self, ann: RoundAnnouncement, job: Callable[[], bytes]) -> None:
        box: list[bytes | BaseException] = []

        def work() -> None:
            try:
                box.append(job())
            except Exception as exc:  # handed back to the agent thread, never lost
                box.append(exc)
            finally:
                self._inbox.put(_WAKE)

        self._job = (ann, self._worker.run(work), box)

    def _collect_job(self) -> None:
        """Publish the update of a finished background training job.

        Finished means its outcome is in the box, or its thread is gone without one.
        The worker fills the box and then wakes this thread, so waiting for the
        thread to have exited (``is_alive()``) missed the wake-up whenever it had not
        exited yet, and the update waited for the next poll (50 ms: measured on
        benchmarks/round.py, it was most of a one-device round's overhead).
        """
        if self._job is None:
            return
        ann, thread, box = self._job
        if not box and thread.is_alive():
            return
        self._job = None
        outcome = box[0] if box else FedgeError("training thread ended without a result")
        if isinstance(outcome, TrainingStopped) and not self._halt.is_set():
            self._decline(ann, RejectReason.TRAIN_TIMEOUT, str(outcome))
            return
        if isinstance(outcome, BaseException):
            self.stats.last_error = str(outcome)
            log.warning("%s: cannot answer round %d: %s", self.config.device, ann.round_id, outcome)
            return
        self._publish_answer(ann, outcome)

    def _publish_answer(self, ann: RoundAnnouncement, frame: bytes) -> None:
        # Counted before the publish: the aggregator may close the round (and a caller
        # read these counters) before publish() even returns on this thread.
        self.stats.rounds_answered += 1
        self.stats.answered_rounds.append(ann.round_id)
        device = self.config.device
        try:
            topic = self.topics.update(ann.round_id, device)
            # Signed for the update topic as a whole frame; chunks carry the signed frame.
            signed = self.signer.sign(topic, frame, now=self.clock())
            limit = ann.max_message_bytes
            if limit is not None and len(signed) > limit:
                # Too large for one broker message: numbered chunks the aggregator reassembles.
                chunk_topic = self.topics.update_chunks(ann.round_id, device)
                for chunk in split_frame(signed, max_message_bytes=limit):
                    self.transport.publish(chunk_topic, chunk)
                    self.stats.update_chunks_sent += 1
            else:
                self.transport.publish(topic, signed)
        except TransportError as exc:
            self.stats.last_error = str(exc)
            self.stats.rounds_answered -= 1
            self.stats.answered_rounds.pop()
            return
        commit, self._commit = self._commit, None
        if commit is not None and commit[0] == ann.round_id:
            try:
                commit[1]()
            except StorageError as exc:
                self.stats.last_error = str(exc)

    def _live_window(self, spec: ModelSpec) -> np.ndarray | None:
        """The model input (1, window, features) of the running unit, or None if none yet."""
        return self.data.live_window(spec, unit=self._current_unit, cycle=self._current_cycle)

    def predict_and_publish(self) -> Prediction | None:
        """Predict on the latest window of the running unit and publish it."""
        if self.model is None or self.model_version is None:
            return None
        spec = self.model.spec
        window = self._live_window(spec)
        if window is None:
            return None
        rul, prob = predict(self.model, window)
        if not (math.isfinite(float(rul[0])) and math.isfinite(float(prob[0]))):
            # The gate's smoke pass makes this unlikely; a reading it never saw can still.
            self._refuse(RefusalReason.NON_FINITE_OUTPUT.value, "prediction", "model output")
            return None
        prediction = Prediction(
            fleet=self.config.fleet,
            device=self.config.device,
            ts=self.clock(),
            model_version=self.model_version,
            rul=float(rul[0]),
            failure_probability=float(np.clip(prob[0], 0.0, 1.0)),
            horizon=spec.horizon,
            # Version 0 only carries the fleet's normalisation (no training yet): its
            # predictions are published for completeness but must not page anyone. Nor
            # must one on a life younger than the model's window: the model was trained
            # on full windows only (a history-context one reads noise in a young life's
            # drift: RUL 5-25 for new C-MAPSS engines, see benchmarks/alerts.py).
            alert=self.maintenance.predicted(
                low=bool(
                    self.model_version > 0
                    and rul[0] < self.config.alert_rul
                    and (self._current_cycle or 0) >= spec.window - 1
                ),
                cycle=self._current_cycle,
            ),
            unit=self._current_unit,
            cycle=self._current_cycle,
            **self.maintenance.prediction_fields(),
        )
        try:
            self._publish(self.topics.prediction(self.config.device), encode_message(prediction))
        except TransportError as exc:
            self.stats.last_error = str(exc)
            return None
        self.stats.predictions += 1
        return prediction
