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

Authentication (security mode ``verify``, :class:`~fedge.signing.Authenticator`):
every status and reply must be signed by its device's key in the registry before it
is decoded; failures are counted per reason (``unsigned``, ``bad_signature``,
``unknown_device``, ...) in ``rejected_total``. So only verified devices are ever
online, and only they are expected in a round, whatever the broker lets through.
An ``online`` status must also be fresh and no older than the device's last one
(:class:`~fedge.signing.StatusStamps`). A device that declines a round (a
``decline`` frame, e.g. ``model_refused``) is counted under its reason and no
longer waited for.

Crash safety: every round is journaled (:mod:`aggregator.effects`: open before its
announcement, each accepted reply before anything depends on it, close before its
results), and :func:`aggregator.recovery.restore_coordinator` rebuilds a coordinator
from the checkpoint and the journals, reopening the round that was being collected.

Training rounds announce the codec devices encode their updates with
(``AggregatorConfig.codec``); a reply is validated in its encoded form and folded
into the reducer from there (:meth:`~fedge.strategies.Reducer.add_encoded`), never
copied whole. A reply larger than ``max_message_bytes`` arrives as chunks on
``.../updates/<device>/chunks``, reassembled by a bounded
:class:`~fedge.chunking.ChunkAssembler`; dropped chunks are counted by reason in
the round summary.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from aggregator.effects import (
    Effect,
    JournalClose,
    JournalOpen,
    JournalUpdate,
    Publish,
    RoundClosed,
    SaveCheckpoint,
)
from aggregator.safeguards import RoundSafeguards
from aggregator.state import Checkpoint
from fedge.chunking import ChunkAssembler, ChunkLimits
from fedge.codec import Frame, FrameHeader, decode_frame, encode_frame
from fedge.compression import UpdateCodec, resolve_codec, wire_codec
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
from fedge.signing import Authenticator, StatusStamps
from fedge.strategies import Reducer, ServerStep, Strategy, stats_template
from fedge.tally import RejectionTally
from fedge.topics import ParsedTopic, TopicKind, Topics, parse_topic
from fedge.validation import RoundExpectation, UpdateValidator

__all__ = [
    "Effect",
    "JournalClose",
    "JournalOpen",
    "JournalUpdate",
    "Phase",
    "Publish",
    "RoundClosed",
    "RoundCoordinator",
    "SaveCheckpoint",
]

log = logging.getLogger(__name__)

NORMALISATION = ("input_mean", "input_std")


class Phase(StrEnum):
    WAITING = "waiting"
    COLLECTING = "collecting"
    FINISHED = "finished"


@dataclass
class _OpenRound:
    """Everything about the round being collected (a :class:`~fedge.strategies.RoundView`).

    Memory: the reducer's (O(model) for ``mean``) plus the sets of device names and a
    32-byte digest per accepted reply (a redelivered copy is recognised by it).
    """

    announcement: RoundAnnouncement
    expect: RoundExpectation
    expected: set[str]
    accumulator: Reducer | None
    received: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    digests: dict[tuple[int, str], bytes] = field(default_factory=dict)
    duplicates: int = 0
    resumed: bool = False
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
        authenticator: Authenticator | None = None,
        status_stamps: StatusStamps | None = None,
    ) -> None:
        self.config = config
        # Mode "off" by default (demo, simulations): nothing is verified.
        self.authenticator = authenticator or Authenticator("off")
        self.status_stamps = status_stamps or StatusStamps()
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
        # Update bounds, round spools, privacy budget (aggregator.safeguards).
        self.safeguards = RoundSafeguards(
            config,
            n_params=sum(int(self.tensors[k].size) for k in self.trainable),
            completed_rounds=self.version,
        )
        self.phase = Phase.WAITING
        self.online: dict[str, DeviceStatus] = {}
        self.open: _OpenRound | None = None
        self._earlier: dict[int, _EarlierRound] = {}
        self.evaluated = False
        self.rejected_total: Counter[str] = Counter()
        self._tally = RejectionTally()
        self.duplicates_total = 0
        # The newest summaries only: an aggregator runs for months (older ones are in the
        # summary topic's sinks).
        self.history: deque[RoundSummary] = deque(maxlen=config.history_limit)
        # What the checkpoint on disk holds; rounds replayed from journals move past it.
        self._durable = (self.version, self.stats_done)

    # Public API ---------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def start(self, now: float) -> list[Effect]:
        """Effects to run once at start-up: save state replayed from journals, re-publish
        the current global model if it exists, re-announce a round resumed from its journal."""
        effects: list[Effect] = []
        if (self.version, self.stats_done) != self._durable:
            effects.append(SaveCheckpoint(self._checkpoint()))
            self._durable = (self.version, self.stats_done)
        if self.stats_done:
            # max(): without federated statistics the first start has no round yet (-1).
            effects.append(self._global_publish(max(self.last_round_id, 0), num_examples=0))
        if self.open is not None:
            ann = encode_message(self.open.announcement)
            effects.append(Publish(self.topics.round_current, ann, retain=True))
        return effects

    def on_status(self, device: str, payload: bytes, now: float) -> list[Effect]:
        """A device's retained status (or last will) changed (``payload`` as received)."""
        topic = self.topics.status(device)
        try:
            # No replay guard: statuses are retained and the will is signed at connect
            # time; StatusStamps keeps "online" fresh instead.
            payload, signed_at = self.authenticator.open_stamped(payload, topic, now=now)
            status = decode_message(DeviceStatus, payload)
            if signed_at is not None:
                self.status_stamps.check(
                    device, signed_at, online=status.state == "online", now=now
                )
        except ProtocolError as exc:
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

        An accepted reply's first effect is its :class:`JournalUpdate`. ``count_bytes=False``
        for a frame reassembled from chunks (its bytes were counted as they came).
        """
        current = self.open
        if current is not None and count_bytes:
            current.bytes_received += len(payload)
        try:
            parsed = parse_topic(topic)
            max_bytes = (
                current.announcement.max_update_bytes if current else self.config.max_update_bytes
            )
            # Before decoding: a forged or unknown device's frame is never parsed.
            self.authenticator.check_frame(payload, topic, max_bytes=max_bytes)
            if self._is_late(parsed, current):
                raise UpdateRejectedError(RejectReason.LATE, f"round {parsed.round_id} closed")
            if current is None:
                decode_frame(payload, max_bytes=self.config.max_update_bytes)
                raise UpdateRejectedError(RejectReason.WRONG_ROUND, "no round is open")
            if not self._accept(current, parsed, payload, now):
                return []
        except (ProtocolError, UpdateRejectedError) as exc:
            detail = exc.detail if isinstance(exc, UpdateRejectedError) else str(exc)
            return self._reject(exc.reason, f"{topic}: {detail}")
        return [JournalUpdate(current.expect.round_id, topic, payload), *self.tick(now)]

    def on_announcement(self, payload: bytes, now: float) -> list[Effect]:
        """The (retained) ``rounds/current`` on the broker: the fleet's view of the round.

        An announcement newer than any round this aggregator remembers means its journal
        was lost: the fleet may have answered that round id already, so the next round
        gets a higher one; a round opened afresh with a taken id and nothing counted yet
        is re-announced under a fresh id. Never a round the fleet ignores as answered.
        """
        try:
            ann = decode_message(RoundAnnouncement, payload)
        except MessageError as exc:
            self._count_reject(exc.reason, f"round announcement: {exc}")
            return []
        current = self.open
        if ann.fleet != self.config.fleet:
            return []
        if current is not None and ann.round_id == current.expect.round_id:
            if ann == current.announcement:
                return []  # our own, echoed
        elif ann.round_id <= self.last_round_id:
            return []  # an older round
        log.warning(
            "the broker holds a round %d this aggregator did not announce (journal lost?): "
            "the next round id is %d",
            ann.round_id,
            ann.round_id + 1,
        )
        self.last_round_id = max(self.last_round_id, ann.round_id)
        if (
            current is not None
            and not current.resumed
            and current.counted == 0
            and current.expect.round_id <= ann.round_id
        ):
            self.open = None
            self.phase = Phase.WAITING
            return self._maybe_announce(now)
        return []

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

    # Recovery (see aggregator.recovery.restore_coordinator) --------------------------------
    def resume(self, announcement: RoundAnnouncement, expected: Iterable[str]) -> None:
        """Reopen a journaled round as it was announced; nothing is published yet
        (:meth:`start` re-announces it)."""
        self.open = None
        self._open_round(announcement, expected, resumed=True)

    def replay(self, topic: str, payload: bytes) -> str | None:
        """Count a journaled reply again, exactly as when it arrived; the reason it is
        not counted (``"duplicate"`` or a rejection reason) or None."""
        current = self.open
        assert current is not None  # noqa: S101 - only after resume()
        current.bytes_received += len(payload)
        try:
            accepted = self._accept(
                current, parse_topic(topic), payload, current.announcement.issued_at
            )
        except (ProtocolError, UpdateRejectedError) as exc:
            current.rejected[exc.reason.value] += 1
            return exc.reason.value
        return None if accepted else "duplicate"

    def close_replayed(self, ts: float) -> None:
        """Close the resumed round as its journal says it closed at ``ts`` (no effects:
        the fleet saw them before the restart; the state moves on)."""
        durable = self._durable
        self._close_round(ts)
        self._durable = durable

    # Internals ----------------------------------------------------------------------------
    def next_task(self) -> RoundTask | None:
        """The task of the next round to open, or None once all rounds are done."""
        if not self.stats_done:
            return "stats"
        if self.config.rounds is None or self.version < self.config.rounds:
            return "train"
        if self.config.final_evaluation and not self.evaluated:
            return "evaluate"
        return None

    def _maybe_announce(self, now: float) -> list[Effect]:
        task = self.next_task()
        if task is None:
            self.phase = Phase.FINISHED
            return []
        plan = self.strategy.participation.open_round(
            self.online.keys(), task=task, now=now, round_id=self.last_round_id + 1
        )
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
            min_clients=plan.quorum or self.config.min_clients,
            training=training,
            max_update_bytes=self.config.max_update_bytes,
            codec=wire_codec(codec),
            max_message_bytes=self.config.max_message_bytes,
            model=self.spec,
            selected=None if plan.selected is None else sorted(plan.selected),
        )
        self._open_round(announcement, plan.expected)
        log.info(
            "round %d (%s) announced, %d devices expected",
            self.last_round_id,
            task,
            len(plan.expected),
        )
        payload = encode_message(announcement)
        return [
            JournalOpen(self.last_round_id, payload, tuple(sorted(plan.expected))),
            Publish(self.topics.round_current, payload, retain=True),
        ]

    def _open_round(
        self, announcement: RoundAnnouncement, expected: Iterable[str], *, resumed: bool = False
    ) -> None:
        task = announcement.task
        template: dict[str, np.ndarray] = {}
        if task == "train":
            template = {k: self.tensors[k] for k in self.trainable}
        elif task == "stats":
            template = stats_template(self.spec.stats_features)
        # The codec the announcement named (a resumed round keeps its own).
        codec = resolve_codec(announcement.codec)
        self.open = _OpenRound(
            announcement=announcement,
            expect=RoundExpectation(announcement.round_id, self.version, task, template, codec),
            expected=set(expected),
            accumulator=self.safeguards.wrap(
                self.strategy.reducer_for(task, template), task, template
            ),
            resumed=resumed,
        )
        self.last_round_id = max(self.last_round_id, announcement.round_id)
        self.phase = Phase.COLLECTING

    def _is_late(self, parsed: ParsedTopic, current: _OpenRound | None) -> bool:
        """A reply to a round this aggregator announced and closed (not one still answerable).

        A closed training round stays answerable (stale replies, FedBuff) only while a
        training round is open to take them: during a statistics or evaluation round,
        or with no round open, its replies are late.
        """
        rid = parsed.round_id
        if rid is None or rid > self.last_round_id:
            return False
        if current is not None and rid == current.expect.round_id:
            return False
        answerable = current is not None and current.expect.task == "train"
        return not (answerable and rid in self._earlier)

    def _accept(self, current: _OpenRound, parsed: ParsedTopic, payload: bytes, now: float) -> bool:
        """Decode, validate and fold in a reply; False for a copy of one already counted."""
        key = (parsed.round_id if parsed.round_id is not None else -1, parsed.device or "")
        digest = hashlib.sha256(payload).digest()
        if current.digests.get(key) == digest:
            # The same bytes again: the broker redelivering a reply the journal already
            # holds (QoS 1 is at least once). One contribution, not a second one.
            current.duplicates += 1
            self.duplicates_total += 1
            log.info("duplicate of an accepted reply ignored: %s/%s", *key)
            return False
        # Views into the payload: the reducer reads the encoded body where it lies.
        frame = decode_frame(payload, max_bytes=current.announcement.max_update_bytes, copy=False)
        self._admit(current, parsed, frame, now)
        current.digests[key] = digest
        return True

    def _admit(self, current: _OpenRound, parsed: ParsedTopic, frame: Frame, now: float) -> None:
        """Validate a reply, let the policy weigh it and fold it in; raises to refuse it."""
        if frame.header.kind == "decline":
            self._declined(current, parsed, frame)
            return
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

    def _declined(self, current: _OpenRound, parsed: ParsedTopic, frame: Frame) -> None:
        """A device says it cannot answer the open round: count why, stop waiting for it."""
        header = frame.header
        device = parsed.device
        if parsed.kind is not TopicKind.UPDATE or device is None or header.device != device:
            raise UpdateRejectedError(RejectReason.TOPIC_MISMATCH, f"decline on {parsed}")
        if header.fleet != self.config.fleet:
            raise UpdateRejectedError(RejectReason.WRONG_FLEET, f"fleet {header.fleet!r}")
        round_id = current.expect.round_id
        if parsed.round_id in self._earlier and header.round_id == parsed.round_id:
            # A device declining a round that closed while it thought (FedBuff): nothing
            # to stop waiting for any more. Counted like any reply to a closed round.
            raise UpdateRejectedError(
                RejectReason.LATE, f"decline of round {header.round_id}, closed already"
            )
        if parsed.round_id != round_id or header.round_id != round_id:
            raise UpdateRejectedError(
                RejectReason.WRONG_ROUND, f"decline of round {header.round_id}, open is {round_id}"
            )
        allowed = self.config.allowed_devices
        if allowed is not None and device not in allowed:
            raise UpdateRejectedError(RejectReason.UNKNOWN_DEVICE, f"device {device!r}")
        if device in current.received or device in current.declined:
            raise UpdateRejectedError(RejectReason.REPLAY, f"{device!r} already answered")
        reason = header.reason or "declined"
        current.declined.add(device)
        current.expected.discard(device)
        current.rejected[reason] += 1
        self.rejected_total[reason] += 1
        log.info("round %d: %s declines (%s): %s", round_id, device, reason, header.detail)

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
        # The first few of each reason, then every 1000th: a flood of forgeries fills
        # a counter, not the log.
        if self._tally.add(reason.value):
            log.warning(
                "rejected (%s, #%d): %s", reason.value, self._tally.counts[reason.value], detail
            )

    def _close(self, now: float) -> list[Effect]:
        effects = self._close_round(now)
        effects.extend(self._maybe_announce(now))
        return effects

    def _close_round(self, now: float) -> list[Effect]:
        """Apply the open round (if it succeeded); effects in durable-first order:
        journal close, checkpoint, then what the fleet sees."""
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
        safety = self.safeguards.close_round(
            current.accumulator, task=task, published=ok and task == "train"
        )
        participants -= safety.late_rejected
        for reason, count in safety.rejected.items():
            current.rejected[reason] += count
            self.rejected_total[reason] += count
        effects.append(JournalClose(current.expect.round_id, "completed" if ok else "failed", now))
        if ok and task in ("stats", "train"):
            # Saved before the publish, so the version the fleet sees is on disk first (a
            # failed save is retried when the next round closes).
            effects.append(SaveCheckpoint(self._checkpoint()))
            self._durable = (self.version, self.stats_done)
            effects.append(self._global_publish(current.expect.round_id, current.num_examples))
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
            clipped=safety.clipped,
            dp_epsilon=safety.dp_epsilon,
            dp_delta=safety.dp_delta,
            dp_epsilon_local=safety.dp_epsilon_local,
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
        if parsed.kind is TopicKind.ROUND_CURRENT:
            return self.on_announcement(payload, now)
        if parsed.kind is TopicKind.UPDATE_CHUNK:
            return self.on_chunk(parsed, payload, now)
        return []
