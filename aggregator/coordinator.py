"""The round state machine, sans I/O.

:class:`RoundCoordinator` is fed decoded-at-the-edge events (status messages,
reply frames as raw bytes, clock ticks) and returns *effects* for the service
to carry out: publish this, save that checkpoint, a round has closed. It never
touches a socket or a file, so every rule here is tested with literal bytes.

Round lifecycle (the conditions in brackets are those of the ``sync`` policy)::

    waiting ──(policy opens: >= min_clients online)──> collecting
      ^                                                    │ (policy closes: all expected
      │                                                    │  replied, target reached,
      │                                                    │  or deadline)
      └──── next round <──── close: reduce / server step / publish / checkpoint

Round 0 is the federated statistics round (devices send per-feature count, sum
and sum of squares; the aggregator sets the model's normalisation from them and
publishes global version 0). Rounds 1..R train (version v -> v+1). A final
``evaluate`` round measures the last global model on every device's held-out data.

The decisions are the strategy's (:class:`~fedge.strategies.Strategy`): its
participation policy says who is expected, which replies count and when a round
closes and succeeds; its reducers fold the accepted replies into one aggregate;
its server step turns that into the next global weights. The coordinator keeps
the facts (who is online, what arrived, the clock) and the bookkeeping.

Training rounds announce the codec devices encode their updates with
(``AggregatorConfig.codec``); a reply is validated in its encoded form and folded
into the reducer from there (:meth:`~fedge.strategies.Reducer.add_encoded`), never
copied whole. A reply larger than ``max_message_bytes`` arrives as chunks on
``.../updates/<device>/chunks``, reassembled by a bounded
:class:`~fedge.chunking.ChunkAssembler`; dropped chunks are counted by reason in
the round summary.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from aggregator.state import Checkpoint
from fedge.chunking import ChunkAssembler, ChunkLimits
from fedge.codec import Frame, FrameHeader, decode_frame, encode_frame
from fedge.compression import UpdateCodec, wire_codec
from fedge.config import AggregatorConfig
from fedge.errors import (
    MessageError,
    ProtocolError,
    RejectReason,
    TopicError,
    UpdateRejectedError,
)
from fedge.messages import (
    DeviceStatus,
    RoundAnnouncement,
    RoundSummary,
    RoundTask,
    decode_message,
    encode_message,
)
from fedge.strategies import Reducer, ServerStep, Strategy, stats_template
from fedge.topics import ParsedTopic, TopicKind, Topics, parse_topic
from fedge.validation import RoundExpectation, UpdateValidator

__all__ = ["Effect", "Phase", "Publish", "RoundClosed", "RoundCoordinator", "SaveCheckpoint"]

log = logging.getLogger(__name__)

NORMALISATION = ("input_mean", "input_std")


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class RoundClosed:
    summary: RoundSummary


Effect = Publish | SaveCheckpoint | RoundClosed


class Phase(StrEnum):
    WAITING = "waiting"
    COLLECTING = "collecting"
    FINISHED = "finished"


@dataclass
class _OpenRound:
    """Everything about the round being collected (a :class:`~fedge.strategies.RoundView`).

    Memory: the reducer's (O(model) for ``mean``) plus the sets of device names.
    """

    announcement: RoundAnnouncement
    expect: RoundExpectation
    expected: set[str]
    accumulator: Reducer | None
    received: set[str] = field(default_factory=set)
    counted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    num_examples: int = 0
    loss_sum: float = 0.0
    loss_weight: float = 0.0
    sq_err_sum: float = 0.0
    val_examples: int = 0


@dataclass(frozen=True, slots=True)
class _EarlierRound:
    """A closed training round still answerable by stale replies (``max_staleness > 0``).

    ``expect.template`` holds the global weights the round was announced with (the
    base of its replies): references to arrays the coordinator never mutates.
    """

    expect: RoundExpectation
    received: set[str]


class RoundCoordinator:
    """Runs one fleet's rounds as its strategy's participation policy decides.

    ``strategy`` is a full :class:`~fedge.strategies.Strategy`, or just a server step,
    which is then combined with the reducer and participation policy ``config`` names.
    """

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        strategy: Strategy | ServerStep,
        initial: Checkpoint,
        trainable: Sequence[str],
    ) -> None:
        self.config = config
        self.topics = Topics(config.fleet)
        if isinstance(strategy, ServerStep):
            strategy = Strategy.from_settings(config, server_step=strategy)
        self.strategy = strategy
        self.spec = initial.spec
        self.version = initial.version
        self.last_round_id = initial.round_id
        self.stats_done = initial.stats_done or not config.federated_stats
        self.tensors = {k: np.asarray(v, np.float32) for k, v in initial.tensors.items()}
        self.trainable = list(trainable)
        if initial.strategy_state:
            strategy.server_step.load_state(initial.strategy_state)
        self.validator = UpdateValidator(fleet=config.fleet, allowed_devices=config.allowed_devices)
        self.chunks = ChunkAssembler(
            ChunkLimits(max_frame_bytes=config.max_update_bytes, timeout_s=config.round_timeout_s)
        )
        self.phase = Phase.WAITING
        self.online: dict[str, DeviceStatus] = {}
        self.open: _OpenRound | None = None
        self._earlier: dict[int, _EarlierRound] = {}
        self.evaluated = False
        self.rejected_total: Counter[str] = Counter()
        self.history: list[RoundSummary] = []

    # Public API ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def start(self, now: float) -> list[Effect]:
        """Effects to run once at start-up: re-publish the current global model if it exists."""
        if self.stats_done:
            return [self._global_publish(round_id=self.last_round_id, num_examples=0)]
        return []

    def on_status(self, device: str, payload: bytes, now: float) -> list[Effect]:
        """A device's retained status (or last will) changed."""
        try:
            status = decode_message(DeviceStatus, payload)
        except MessageError as exc:
            self._count_reject(exc.reason, f"status from {device}: {exc}")
            return []
        if status.device != device or status.fleet != self.config.fleet:
            self._count_reject(
                RejectReason.TOPIC_MISMATCH, f"status on {device} names {status.device}"
            )
            return []
        allowed = self.config.allowed_devices
        if allowed is not None and device not in allowed:
            self._count_reject(RejectReason.UNKNOWN_DEVICE, f"status from {device}")
            return []
        if status.state == "online":
            self.online[device] = status
        else:
            self.online.pop(device, None)
            if self.open is not None:
                self.open.expected.discard(device)
        return self.tick(now)

    def on_reply(
        self, topic: str, payload: bytes, now: float, *, count_bytes: bool = True
    ) -> list[Effect]:
        """An update / evaluation / stats frame arrived on ``rounds/<r>/updates/<device>``.

        ``count_bytes=False`` for a frame reassembled from chunks (counted as they came).
        """
        current = self.open
        if current is not None and count_bytes:
            current.bytes_received += len(payload)
        try:
            parsed = parse_topic(topic)
            max_bytes = (
                current.announcement.max_update_bytes if current else self.config.max_update_bytes
            )
            # Views into the payload: the reducer reads the encoded body where it lies.
            frame = decode_frame(payload, max_bytes=max_bytes, copy=False)
            if current is None:
                raise UpdateRejectedError(RejectReason.WRONG_ROUND, "no round is open")
            self._admit(current, parsed, frame, now)
        except (ProtocolError, UpdateRejectedError) as exc:
            detail = exc.detail if isinstance(exc, UpdateRejectedError) else str(exc)
            return self._reject(exc.reason, f"{topic}: {detail}")
        return self.tick(now)

    def on_chunk(self, parsed: ParsedTopic, payload: bytes, now: float) -> list[Effect]:
        """One chunk of an update frame on ``rounds/<r>/updates/<device>/chunks``."""
        assert parsed.device is not None and parsed.round_id is not None  # noqa: S101 - by kind
        if self.open is not None:
            self.open.bytes_received += len(payload)
        before = self.chunks.drops.copy()
        frame = self.chunks.add(parsed.device, payload, now)
        self._count_chunk_drops(before)
        if frame is None:
            return self.tick(now)
        topic = self.topics.update(parsed.round_id, parsed.device)
        return self.on_reply(topic, frame, now, count_bytes=False)

    def _count_chunk_drops(self, before: Counter[RejectReason]) -> None:
        """Count the assembler's drops since ``before``, per reason, like rejections."""
        for drop in self.chunks.take_drops():
            log.warning("chunk dropped (%s) from %s: %s", drop.reason.value, drop.sender,
                        drop.detail)
        for reason, n in (self.chunks.drops - before).items():
            self.rejected_total[reason.value] += n
            if self.open is not None:
                self.open.rejected[reason.value] += n

    def tick(self, now: float) -> list[Effect]:
        """Advance time: open the next round or close the current one when due."""
        if self.chunks.transfers:
            before = self.chunks.drops.copy()
            self.chunks.expire(now)
            self._count_chunk_drops(before)
        if self.phase is Phase.WAITING:
            return self._maybe_announce(now)
        current = self.open
        if (
            self.phase is Phase.COLLECTING
            and current is not None
            and self.strategy.participation.should_close(current, now)
        ):
            return self._close(now)
        return []

    # Internals ----------------------------------------------------------------------------
    def _next_task(self) -> RoundTask | None:
        if not self.stats_done:
            return "stats"
        if self.config.rounds is None or self.version < self.config.rounds:
            return "train"
        if self.config.final_evaluation and not self.evaluated:
            return "evaluate"
        return None

    def _maybe_announce(self, now: float) -> list[Effect]:
        task = self._next_task()
        if task is None:
            self.phase = Phase.FINISHED
            return []
        plan = self.strategy.participation.open_round(self.online.keys(), task=task, now=now)
        if plan is None:
            return []
        self.last_round_id += 1
        training = self.config.training
        options = self.strategy.server_step.client_options()
        if options:
            training = training.model_copy(update=options)
        codec = self.config.codec if task == "train" else UpdateCodec()
        announcement = RoundAnnouncement(
            fleet=self.config.fleet,
            round_id=self.last_round_id,
            task=task,
            base_version=self.version,
            issued_at=now,
            deadline=plan.deadline,
            min_clients=self.config.min_clients,
            training=training,
            max_update_bytes=self.config.max_update_bytes,
            codec=wire_codec(codec),
            max_message_bytes=self.config.max_message_bytes,
            model=self.spec,
        )
        template: dict[str, np.ndarray] = {}
        if task == "train":
            template = {k: self.tensors[k] for k in self.trainable}
        elif task == "stats":
            template = stats_template(self.spec.stats_features)
        self.open = _OpenRound(
            announcement=announcement,
            expect=RoundExpectation(self.last_round_id, self.version, task, template, codec),
            expected=set(plan.expected),
            accumulator=self.strategy.reducer_for(task, template),
        )
        self.phase = Phase.COLLECTING
        log.info(
            "round %d (%s) announced, %d devices expected",
            self.last_round_id,
            task,
            len(plan.expected),
        )
        return [Publish(self.topics.round_current, encode_message(announcement), retain=True)]

    def _admit(self, current: _OpenRound, parsed: ParsedTopic, frame: Frame, now: float) -> None:
        """Validate a reply, let the policy weigh it and fold it in; raises to refuse it."""
        answered = self._round_answered(parsed, current)
        reply = self.validator.validate(
            parsed, frame, answered.expect, already_received=answered.received
        )
        device = reply.device
        participation = self.strategy.participation
        staleness = self.version - answered.expect.base_version
        factor = participation.admit(current, device, staleness=staleness, now=now)
        header = frame.header
        weight = float(header.num_examples) * factor
        accumulator = current.accumulator
        # First, so that an update the reducer refuses leaves no trace in the round.
        if accumulator is not None and reply.update is None:  # stats
            accumulator.add(frame.tensors, weight)
        elif accumulator is not None and reply.update is not None and staleness > 0:
            tensors = participation.rebase(
                reply.update.decompress(), base=answered.expect.template, current=self.tensors
            )
            accumulator.add(tensors, weight)
        elif accumulator is not None and reply.update is not None:
            accumulator.add_encoded(reply.update, weight)
        answered.received.add(device)
        current.counted += 1
        current.num_examples += header.num_examples
        metrics = header.metrics
        if current.expect.task == "train":
            loss = metrics.get("train_loss")
            if loss is not None and loss >= 0:
                current.loss_sum += loss * header.num_examples
                current.loss_weight += header.num_examples
            self._add_val(current, metrics.get("val_rmse"), metrics.get("val_examples"))
        elif current.expect.task == "evaluate":
            self._add_val(current, metrics.get("rmse"), float(header.num_examples))

    def _round_answered(
        self, parsed: ParsedTopic, current: _OpenRound
    ) -> _OpenRound | _EarlierRound:
        """The open round, or the earlier training round a stale reply answers."""
        if current.expect.task == "train" and parsed.round_id is not None:
            earlier = self._earlier.get(parsed.round_id)
            if earlier is not None:
                return earlier
        return current

    def _remember(self, closed: _OpenRound) -> None:
        """Keep a closed training round answerable, within the policy's staleness bound."""
        limit = self.strategy.participation.max_staleness
        if limit <= 0:
            return
        self._earlier[closed.expect.round_id] = _EarlierRound(closed.expect, closed.received)
        for round_id in sorted(self._earlier):  # oldest first
            too_old = self.version - self._earlier[round_id].expect.base_version > limit
            if too_old or len(self._earlier) > limit + 1:
                del self._earlier[round_id]

    @staticmethod
    def _add_val(current: _OpenRound, rmse: float | None, n: float | None) -> None:
        if rmse is None or n is None or rmse < 0 or n <= 0:
            return
        current.sq_err_sum += rmse * rmse * n
        current.val_examples += int(n)

    def _reject(self, reason: RejectReason, detail: str) -> list[Effect]:
        self._count_reject(reason, detail)
        if self.open is not None:
            self.open.rejected[reason.value] += 1
        return []

    def _count_reject(self, reason: RejectReason, detail: str) -> None:
        self.rejected_total[reason.value] += 1
        log.warning("rejected (%s): %s", reason.value, detail)

    def _close(self, now: float) -> list[Effect]:
        current = self.open
        assert current is not None  # noqa: S101 - only called while collecting
        self.open = None
        self.phase = Phase.WAITING
        task = current.expect.task
        participants = current.counted
        effects: list[Effect] = []
        ok = self.strategy.participation.succeeded(current)
        aggregate: dict[str, np.ndarray] = {}
        if ok and current.accumulator is not None:
            try:
                aggregate = current.accumulator.result()
            except ValueError as exc:  # nothing to reduce, e.g. only zero-row stats
                log.warning("round %d: %s", current.expect.round_id, exc)
                ok = False
        if ok and task == "stats":
            mean_name, std_name = NORMALISATION
            self.tensors[mean_name] = aggregate["mean"]
            self.tensors[std_name] = aggregate["std"]
            self.stats_done = True
        if ok and task == "train":
            current_trainable = {k: self.tensors[k] for k in self.trainable}
            self.tensors.update(self.strategy.server_step.step(current_trainable, aggregate))
            self.version += 1
        if task == "train":
            self._remember(current)
        if ok and task == "evaluate":
            self.evaluated = True
        if ok and task in ("stats", "train"):
            effects.append(self._global_publish(current.expect.round_id, current.num_examples))
            effects.append(SaveCheckpoint(self._checkpoint()))
        val_error = (
            math.sqrt(current.sq_err_sum / current.val_examples) if current.val_examples else None
        )
        summary = RoundSummary(
            fleet=self.config.fleet,
            round_id=current.expect.round_id,
            task=task,
            ts=now,
            outcome="completed" if ok else "failed",
            version=self.version,
            participants=participants,
            rejected=sum(current.rejected.values()),
            rejected_by_reason=dict(current.rejected),
            num_examples=current.num_examples,
            train_loss=current.loss_sum / current.loss_weight if current.loss_weight else None,
            val_error=val_error,
            val_examples=current.val_examples,
            bytes_received=current.bytes_received,
            duration_s=max(0.0, now - current.announcement.issued_at),
        )
        self.history.append(summary)
        log.info(
            "round %d (%s) %s: %d participants, val_error=%s",
            summary.round_id,
            task,
            summary.outcome,
            participants,
            val_error,
        )
        effects.append(Publish(self.topics.round_summary, encode_message(summary)))
        effects.append(RoundClosed(summary))
        effects.extend(self._maybe_announce(now))
        return effects

    def _checkpoint(self) -> Checkpoint:
        return Checkpoint(
            fleet=self.config.fleet,
            version=self.version,
            round_id=self.last_round_id,
            spec=self.spec,
            tensors=dict(self.tensors),
            strategy_state=self.strategy.server_step.state(),
            stats_done=self.stats_done,
        )

    def _global_publish(self, round_id: int, num_examples: int) -> Publish:
        header = FrameHeader(
            kind="global",
            fleet=self.config.fleet,
            round_id=round_id,
            base_version=max(self.version - 1, 0),
            version=self.version,
            num_examples=num_examples,
            model=self.spec,
        )
        return Publish(self.topics.global_model, encode_frame(header, self.tensors), retain=True)

    def handle(self, topic: str, payload: bytes, now: float) -> list[Effect]:
        """Route any message from the fleet's subscriptions to the right handler."""
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            self._count_reject(exc.reason, str(exc))
            return []
        if parsed.fleet != self.config.fleet:
            self._count_reject(RejectReason.WRONG_FLEET, f"message for fleet {parsed.fleet}")
            return []
        if parsed.kind is TopicKind.STATUS and parsed.device is not None:
            return self.on_status(parsed.device, payload, now)
        if parsed.kind is TopicKind.UPDATE:
            return self.on_reply(topic, payload, now)
        if parsed.kind is TopicKind.UPDATE_CHUNK:
            return self.on_chunk(parsed, payload, now)
        return []
